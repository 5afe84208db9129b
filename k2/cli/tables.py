"""``k2 tables``: what landed in Iceberg, and whether the lake has caught up with Kafka."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from k2.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tables",
        help="show K2's Iceberg tables: rows, last commit, offsets, lake lag",
        description=(
            "Show each K2 Iceberg table (current snapshot, commit time, rows, Kafka offsets recorded "
            "in its snapshot summary) and the lake lag per source partition: offsets from the first record "
            "Kafka holds that is in no table yet to the end (the last stable offset: a transaction still open "
            "is shown as such, not as lag). Partitions with lag that no member of the consumer group owns are "
            "named in one line (`k2 status` says more). With --wait, poll until the lake lag is zero (exit 1 "
            "on timeout)."
        ),
    )
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the lake lag to reach zero")
    p.add_argument("--head", metavar="TABLE", help="also print the first rows of TABLE, e.g. market_data.trades")
    p.add_argument("-n", "--rows", type=int, default=5, help="rows to print with --head (default 5)")
    p.set_defaults(func=run)


def _short(value: object) -> str:
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run(args: argparse.Namespace) -> int:
    from k2.admin.group import GroupAdmin, read_group_status
    from k2.audit.kafka import KafkaLog
    from k2.catalog import describe_catalog, load_k2_catalog
    from k2.lake.schemas import TABLES
    from k2.lake.status import lake_marks, table_status
    from k2.observe.group import open_transaction_line

    if args.head is not None and args.head not in TABLES:
        print(f"k2 tables: no table {args.head!r}; K2's tables are {', '.join(TABLES)}", file=sys.stderr)
        return 2
    settings = get_settings()
    catalog = load_k2_catalog(settings)
    deadline = time.monotonic() + (args.wait or 0)
    admin = GroupAdmin(settings)
    with KafkaLog(settings) as log:
        while True:
            statuses = table_status(catalog)
            group = read_group_status(admin, log.first_records, settings.source_topics, lake_marks(statuses))
            behind = sum(p.lake_lag for p in group.partitions)
            if not args.wait or behind == 0 or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    print(f"catalog  {describe_catalog(catalog)}")
    print(f"{'table':<28} {'rows':>10} {'snapshot':>20} {'committed (UTC)':<24} age")
    for st in statuses:
        if not st.exists:
            print(f"{st.name:<28} {'(missing: run `k2 init`)':>10}")
            continue
        when = (
            datetime.fromtimestamp(st.committed_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if st.committed_at_ms
            else "-"
        )
        age = st.age_s()
        print(
            f"{st.name:<28} {st.rows:>10} {st.snapshot_id or '-':>20} {when:<24} "
            f"{'-' if age is None else f'{age:.0f}s'}"
        )
    print(f"\n{'topic':<26} {'partition':>9} {'end offset':>11} {'landed up to':>13} {'lake lag':>9}")
    for p in group.partitions:
        mark = "-" if p.mark is None else p.mark
        print(f"{p.topic:<26} {p.partition:>9} {p.ends.stable:>11} {mark:>13} {p.lake_lag:>9}")
    print(f"\nlake lag: {behind} event(s)")
    for p in group.partitions:
        if p.ends.open:
            print(open_transaction_line(p.where, p.ends.stable, p.ends.high))
    unowned = group.unowned_line()
    if unowned:
        print(unowned)
    if args.head is not None:
        rows = catalog.load_table(args.head).scan(limit=args.rows).to_arrow()
        print(f"\nfirst {rows.num_rows} row(s) of {args.head}:")
        for row in rows.to_pylist():
            print("  " + ", ".join(f"{k}={_short(v)}" for k, v in row.items()))
    if args.wait and behind:
        print(f"the lake did not catch up within {args.wait:.0f}s: is the worker running? (see var/log/worker.log)")
        return 1
    return 0
