"""k2 query's core on a SQLite catalog: views of the named tables only, filters pushed into the scans."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.cli.query import aligned
from k2.lake import query as query_module
from k2.lake.arrow import events_to_arrow
from k2.lake.query import ScanFilter, referenced_tables, run_query
from k2.lake.records import BufferedEvent
from k2.lake.schemas import TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import DAY_MS, T0, TOPICS, TRADES_TOPIC, sqlite_catalog, trade


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    writer = IcebergWriter(catalog, TOPICS, "w:1")
    events = [
        BufferedEvent(TRADES_TOPIC, 0, i, trade(symbol=s, exchange_timestamp=T0 + d * DAY_MS + i, volume=10 + i))
        for i, (s, d) in enumerate([("BHP", 0), ("BHP", 0), ("DVN", 0), ("BHP", 1), ("DVN", 1)])
    ]
    writer.commit(TRADES, events_to_arrow(TRADES, events), {(TRADES_TOPIC, 0): 4}, "c1")
    return catalog


def test_only_the_tables_a_query_names_are_read() -> None:
    assert referenced_tables(
        'SELECT * FROM market_data.trades t JOIN "reference_data"."companies" c USING (symbol)'
    ) == [
        "market_data.trades",
        "reference_data.companies",
    ]
    assert referenced_tables("SELECT * FROM market_data.trades_old") == []


def test_symbol_and_time_narrow_the_scan_and_sql_runs_on_what_is_left(catalog: SqlCatalog, monkeypatch: Any) -> None:
    scanned: list[int] = []
    real = query_module.scan_filter_for

    def spy(catalog_: Any, name: str, wanted: ScanFilter) -> Any:
        expr = real(catalog_, name, wanted)
        scanned.append(catalog_.load_table(name).scan(row_filter=expr).to_arrow().num_rows)
        return expr

    monkeypatch.setattr(query_module, "scan_filter_for", spy)
    day1 = datetime.fromtimestamp((T0 + DAY_MS) / 1000, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    sql = "SELECT symbol, sum(volume) AS volume, min(price) AS price FROM market_data.trades GROUP BY symbol"
    result = run_query(catalog, sql, ScanFilter(symbol="BHP", until=day1))
    assert scanned == [2]  # BHP on the first day only
    assert result.to_pylist() == [{"symbol": "BHP", "volume": 21, "price": Decimal("36.667000")}]
    assert run_query(catalog, "SELECT count(*) AS n FROM market_data.trades").to_pylist() == [{"n": 5}]


def test_aligned_text_puts_numbers_right() -> None:
    text = aligned([{"s": "BHP", "n": 5}, {"s": "DVN", "n": 12}], ["s", "n"])
    assert text.splitlines() == ["s     n", "BHP   5", "DVN  12"]
