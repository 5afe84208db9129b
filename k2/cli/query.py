"""``k2 query "SQL"``: DuckDB over K2's Iceberg tables, symbol and time filters pushed down to the scans."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from k2.settings import get_settings

_EPILOG = """\
The tables are named as in Iceberg: market_data.trades, market_data.quotes, market_data.rejects,
market_data.sequence_gaps, reference_data.companies, reference_data.company_versions. Times are UTC.
One-minute OHLCV bars of BHP on 10 March 2014 in Sydney (UTC+11 then: from 13:00 UTC on the 9th):

  k2 query --symbol BHP --since 2014-03-09T13:00 --until 2014-03-10T13:00 "
    SELECT time_bucket(INTERVAL 1 MINUTE, exchange_timestamp) AS minute,
           arg_min(price, (exchange_timestamp, kafka_offset)) AS open, max(price) AS high,
           min(price) AS low, arg_max(price, (exchange_timestamp, kafka_offset)) AS close,
           sum(volume) AS volume, count(*) AS trades
    FROM market_data.trades GROUP BY minute ORDER BY minute"

--symbol, --since and --until narrow every scan before DuckDB sees a row (pyiceberg prunes day
partitions and files by their statistics); a WHERE in the SQL filters what the scans returned."""


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or time: {text!r} (e.g. 2014-03-10 or 2014-03-10T00:30)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query",
        help="run SQL (DuckDB) over K2's tables",
        description="Run a SQL query (DuckDB's dialect) over the K2 tables it names, read from Iceberg.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sql", metavar="SQL")
    p.add_argument("--symbol", help="read only this symbol's rows of tables with a symbol column")
    p.add_argument("--since", type=_instant, metavar="TIME", help="read only rows at or after TIME (UTC if no zone)")
    p.add_argument("--until", type=_instant, metavar="TIME", help="read only rows before TIME")
    p.add_argument("--format", choices=("table", "csv", "parquet"), default="table", help="output (default: table)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write there (required for parquet; default: stdout)")
    p.set_defaults(func=run)


def aligned(rows: list[dict[str, Any]], names: list[str]) -> str:
    """An aligned text table (numbers to the right)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        return str(value)

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    numeric = [all(isinstance(r[n], (int, float)) or type(r[n]).__name__ == "Decimal" for r in rows) for n in names]
    lines = ["  ".join(n.rjust(w) if num else n.ljust(w) for n, w, num in zip(names, widths, numeric, strict=True))]
    for c in cells:
        lines.append("  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(c, widths, numeric, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from k2.catalog import load_k2_catalog
    from k2.lake.query import ScanFilter, referenced_tables, run_query

    if args.format == "parquet" and args.out is None:
        print("k2 query: --format parquet needs --out FILE", file=sys.stderr)
        return 2
    if not referenced_tables(args.sql):
        print(
            "k2 query: the SQL names none of K2's tables (market_data.trades, market_data.quotes, ...)", file=sys.stderr
        )
        return 2
    catalog = load_k2_catalog(get_settings())
    try:
        result = run_query(catalog, args.sql, ScanFilter(args.symbol, args.since, args.until))
    except duckdb.Error as exc:
        print(f"k2 query: {exc}", file=sys.stderr)
        return 2
    if args.format == "parquet":
        pq.write_table(result, args.out)
        print(f"{result.num_rows} row(s) written to {args.out}")
        return 0
    if args.format == "csv":
        sink = args.out or sys.stdout.buffer
        pacsv.write_csv(result, sink)
        return 0
    text = aligned(result.to_pylist(), result.column_names) + f"\n({result.num_rows} row(s))\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
