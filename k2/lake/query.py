"""SQL over K2's tables: DuckDB on Arrow scans of the Iceberg tables, filters pushed down to pyiceberg.

Each K2 table a query names (``market_data.trades``...) becomes a DuckDB view of the same
name over a pyiceberg scan of it. The scan is what decides how much is read: a symbol and a
time range (:class:`ScanFilter`) become pyiceberg row filters, which prune day partitions
and data files by their column statistics before any row is read; DuckDB then runs the SQL
on what the scan returns. Tables the query does not name are not read at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.transforms import DayTransform

from k2.lake.schemas import TABLES

__all__ = ["ScanFilter", "referenced_tables", "run_query", "scan_filter_for"]


@dataclass(frozen=True)
class ScanFilter:
    """What every scan of the query is narrowed to (None: not narrowed)."""

    symbol: str | None = None
    since: datetime | None = None
    """Inclusive, on the table's time column (its day-partition source)."""
    until: datetime | None = None
    """Exclusive."""


def referenced_tables(sql: str) -> list[str]:
    """The K2 tables the SQL names (``namespace.table``, optionally quoted), in K2's order."""
    plain = sql.replace('"', "")
    return [name for name in TABLES if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", plain)]


def _time_column(catalog: Catalog, name: str) -> str | None:
    table = catalog.load_table(name)
    for field in table.spec().fields:
        if isinstance(field.transform, DayTransform):
            return table.schema().find_column_name(field.source_id)
    return None


def scan_filter_for(catalog: Catalog, name: str, wanted: ScanFilter) -> BooleanExpression:
    """``wanted`` as a pyiceberg row filter on table ``name`` (its parts the table has columns for)."""
    table = catalog.load_table(name)
    columns = {f.name for f in table.schema().fields}
    expr: BooleanExpression = AlwaysTrue()
    if wanted.symbol is not None and "symbol" in columns:
        expr = And(expr, EqualTo(term="symbol", value=wanted.symbol))
    time_column = _time_column(catalog, name)
    if time_column is not None:
        if wanted.since is not None:
            expr = And(expr, GreaterThanOrEqual(term=time_column, value=wanted.since.isoformat()))
        if wanted.until is not None:
            expr = And(expr, LessThan(term=time_column, value=wanted.until.isoformat()))
    return expr


def run_query(catalog: Catalog, sql: str, wanted: ScanFilter = ScanFilter()) -> pa.Table:
    """Run ``sql`` (DuckDB's dialect) over the K2 tables it names; the result as an Arrow table."""
    connection = duckdb.connect()
    try:
        for i, name in enumerate(referenced_tables(sql)):
            namespace, table_name = name.split(".", 1)
            scan = catalog.load_table(name).scan(row_filter=scan_filter_for(catalog, name, wanted))
            arrow = scan.to_arrow()
            connection.register(f"__k2_scan_{i}", arrow)
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
            connection.execute(f'CREATE VIEW "{namespace}"."{table_name}" AS SELECT * FROM __k2_scan_{i}')
        connection.execute("SET TimeZone = 'UTC'")
        relation = connection.sql(sql)
        return pa.table({}) if relation is None else relation.to_arrow_table()
    finally:
        connection.close()
