"""Builders shared by the lake tests: contract-shaped records and a throwaway SQLite catalog."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from pyiceberg.catalog.sql import SqlCatalog

from k2.lake.records import BufferedEvent, RejectRecord

TRADES_TOPIC = "market.trades.raw"
QUOTES_TOPIC = "market.quotes.raw"
REFERENCE_TOPIC = "market.reference_data"
TOPICS = {
    "market_data.trades": TRADES_TOPIC,
    "market_data.quotes": QUOTES_TOPIC,
    "reference_data.companies": REFERENCE_TOPIC,
}

T0 = 1_750_000_000_000  # 2025-06-15T15:06:40Z, epoch millis
DAY_MS = 86_400_000


def trade(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "symbol": "BHP",
        "company_id": 1,
        "exchange": "ASX",
        "exchange_timestamp": T0,
        "price": Decimal("36.667000"),
        "volume": 100,
        "qualifiers": 0,
        "venue": "",
        "buyer_id": None,
        "ingestion_timestamp": T0 + 5,
        "sequence_number": 1,
    }
    record.update(overrides)
    return record


def quote(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "symbol": "BHP",
        "company_id": 1,
        "exchange": "ASX",
        "exchange_timestamp": T0,
        "bid_price": Decimal("36.660000"),
        "bid_volume": 500,
        "ask_price": Decimal("36.670000"),
        "ask_volume": 700,
        "ingestion_timestamp": T0 + 5,
        "sequence_number": 1,
    }
    record.update(overrides)
    return record


def company(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "company_id": 1,
        "symbol": "BHP",
        "company_name": "BHP Group Ltd",
        "isin": "AU000000BHP4",
        "start_date": "1885-08-13",
        "end_date": None,
    }
    record.update(overrides)
    return record


def trade_events(partition: int, offsets: range, ts: int = T0, topic: str = TRADES_TOPIC) -> list[BufferedEvent]:
    return [
        BufferedEvent(topic, partition, o, trade(exchange_timestamp=ts + o, sequence_number=o, volume=o + 1))
        for o in offsets
    ]


def reject(topic: str, partition: int, offset: int, **overrides: Any) -> RejectRecord:
    fields: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "reason": "undecodable",
        "detail": "garbage",
        "rejected_at": T0,
        "schema_id": 7,
        "key": b"BHP",
        "value": b"\x00\x00\x00\x00\x07\xff\xfe",
        "worker_id": "test:1",
    }
    fields.update(overrides)
    return RejectRecord(**fields)


def sqlite_catalog(tmp_path: Path, name: str = "k2") -> SqlCatalog:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return SqlCatalog(name, uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=warehouse.as_uri())
