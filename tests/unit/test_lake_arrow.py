"""Events to Arrow: exact values, exact types, the declared order, no surprises in nullability."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest.mock import ANY

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

from k2.lake.arrow import (
    arrow_schema,
    companies_to_arrow,
    events_to_arrow,
    keep_last,
    rejects_to_arrow,
    rows_to_arrow,
)
from k2.lake.records import BufferedEvent
from k2.lake.schemas import COMPANIES, QUOTES, REJECTS, TABLES, TRADES

from .lake_helpers import QUOTES_TOPIC, REFERENCE_TOPIC, T0, TRADES_TOPIC, company, quote, reject, trade

UTC_US = pa.timestamp("us", tz="UTC")


def ev(offset: int, record: dict[str, Any], partition: int = 0, topic: str = TRADES_TOPIC) -> BufferedEvent:
    return BufferedEvent(topic, partition, offset, record)


@pytest.mark.parametrize("name", list(TABLES))
def test_arrow_schema_is_what_iceberg_accepts(name: str) -> None:
    schema = arrow_schema(name)
    iceberg = TABLES[name].schema
    assert [f.name for f in schema] == [f.name for f in iceberg.fields]
    assert [not f.nullable for f in schema] == [f.required for f in iceberg.fields]
    _check_pyarrow_schema_compatible(iceberg, schema)  # raises if append would refuse it


def test_trade_types() -> None:
    schema = arrow_schema(TRADES)
    assert schema.field("price").type == pa.decimal128(18, 6)
    assert schema.field("exchange_timestamp").type == UTC_US
    assert schema.field("ingestion_timestamp").type == UTC_US
    assert schema.field("volume").type == pa.int64()
    assert schema.field("qualifiers").type == pa.int32()
    assert schema.field("kafka_partition").type == pa.int32()
    assert schema.field("kafka_offset").type == pa.int64()


def test_decimals_round_trip_exactly() -> None:
    prices = [Decimal("36.667000"), Decimal("0.000001"), Decimal("999999999999.999999"), Decimal("36.667")]
    table = events_to_arrow(TRADES, [ev(i, trade(price=p, exchange_timestamp=T0 + i)) for i, p in enumerate(prices)])
    got = table["price"].to_pylist()
    assert got == prices
    assert [str(p) for p in got] == ["36.667000", "0.000001", "999999999999.999999", "36.667000"]


def test_decimal_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="price"):
        events_to_arrow(TRADES, [ev(0, trade(price=Decimal("1.0000001")))])


def test_millis_are_exact_utc_instants() -> None:
    ms = 1_750_000_000_123
    table = events_to_arrow(TRADES, [ev(0, trade(exchange_timestamp=ms, ingestion_timestamp=ms + 1))])
    assert table["exchange_timestamp"].type == UTC_US
    assert table["exchange_timestamp"].cast(pa.int64()).to_pylist() == [ms * 1000]
    assert table["exchange_timestamp"][0].as_py() == datetime(2025, 6, 15, 15, 6, 40, 123000, tzinfo=UTC)
    assert table["ingestion_timestamp"].cast(pa.int64()).to_pylist() == [(ms + 1) * 1000]


def test_aware_datetimes_are_accepted_as_the_same_instant() -> None:
    sydney = timezone(timedelta(hours=10))
    instant = datetime(2025, 6, 16, 1, 6, 40, 123456, tzinfo=sydney)
    mixed = [ev(0, trade(exchange_timestamp=instant)), ev(1, trade(exchange_timestamp=T0))]
    table = events_to_arrow(TRADES, mixed)
    values = dict(zip(table["kafka_offset"].to_pylist(), table["exchange_timestamp"].to_pylist(), strict=True))
    assert values[0] == instant
    assert values[1] == datetime.fromtimestamp(T0 / 1000, UTC)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        events_to_arrow(TRADES, [ev(0, trade(exchange_timestamp=datetime(2025, 1, 1)))])


def test_sorted_by_time_then_sequence_nulls_last_then_position() -> None:
    events = [
        ev(0, trade(exchange_timestamp=T0 + 2, sequence_number=1)),
        ev(1, trade(exchange_timestamp=T0, sequence_number=None), partition=1),
        ev(2, trade(exchange_timestamp=T0, sequence_number=9)),
        ev(3, trade(exchange_timestamp=T0, sequence_number=None), partition=0),
        ev(4, trade(exchange_timestamp=T0, sequence_number=3)),
    ]
    table = events_to_arrow(TRADES, events)
    assert table["kafka_offset"].to_pylist() == [4, 2, 3, 1, 0]
    assert table["sequence_number"].to_pylist() == [3, 9, None, None, 1]


def test_nullability_optional_none_is_null_required_none_is_refused() -> None:
    table = events_to_arrow(TRADES, [ev(0, trade(buyer_id=None, sequence_number=None))])
    assert table["buyer_id"].null_count == 1
    assert table["sequence_number"].null_count == 1
    assert table.schema.field("buyer_id").nullable
    assert not table.schema.field("symbol").nullable
    with pytest.raises(ValueError, match="venue is required"):
        events_to_arrow(TRADES, [ev(0, trade(venue=None))])
    missing = trade()
    del missing["symbol"]
    with pytest.raises(ValueError, match="symbol is required"):
        events_to_arrow(TRADES, [ev(0, missing)])


def test_lineage_columns() -> None:
    table = events_to_arrow(TRADES, [ev(41, trade(), partition=5)])
    assert table["kafka_partition"].to_pylist() == [5]
    assert table["kafka_offset"].to_pylist() == [41]


def test_empty_batch() -> None:
    table = events_to_arrow(TRADES, [])
    assert table.num_rows == 0
    assert table.schema == arrow_schema(TRADES)


def test_quotes() -> None:
    events = [
        ev(0, quote(bid_price=Decimal("0"), bid_volume=0), topic=QUOTES_TOPIC),
        ev(1, quote(exchange_timestamp=T0 - 1, sequence_number=None), topic=QUOTES_TOPIC),
    ]
    table = events_to_arrow(QUOTES, events)
    assert table.schema == arrow_schema(QUOTES)
    assert table["kafka_offset"].to_pylist() == [1, 0]
    assert table["bid_price"].to_pylist() == [Decimal("36.660000"), Decimal("0.000000")]


def test_evolved_schema_takes_new_columns_from_the_records() -> None:
    schema = arrow_schema(TRADES).append(pa.field("trade_id", pa.large_string()))
    table = events_to_arrow(TRADES, [ev(0, trade(trade_id="T-1")), ev(1, trade(exchange_timestamp=T0 + 1))], schema)
    assert table["trade_id"].to_pylist() == ["T-1", None]


def test_companies_dates_and_updated_at() -> None:
    events = [
        ev(3, company(), topic=REFERENCE_TOPIC),
        ev(
            4,
            company(company_id=2, symbol="CBA", start_date="1991-09-12", end_date="2024-02-29"),
            topic=REFERENCE_TOPIC,
        ),
    ]
    table = companies_to_arrow(events, updated_at=T0)
    assert table.schema == arrow_schema(COMPANIES)
    rows = table.to_pylist()
    assert rows[0]["start_date"] == date(1885, 8, 13)
    assert rows[0]["end_date"] is None
    assert rows[1]["end_date"] == date(2024, 2, 29)
    assert {r["updated_at"] for r in rows} == {datetime.fromtimestamp(T0 / 1000, UTC)}
    assert [r["kafka_offset"] for r in rows] == [3, 4]


def test_rejects_keep_bytes_exactly() -> None:
    raw = bytes(range(256))
    rejects = [
        reject(TRADES_TOPIC, 2, 10, value=raw, key=None),
        reject(QUOTES_TOPIC, 0, 5, schema_id=None, detail=None, rejected_at=T0 - 1000),
    ]
    table = rejects_to_arrow(rejects)
    assert table.schema == arrow_schema(REJECTS)
    rows = {r["source_offset"]: r for r in table.to_pylist()}
    assert rows[10]["value"] == raw
    assert rows[10]["key"] is None
    assert rows[10]["source_topic"] == TRADES_TOPIC
    assert rows[5]["schema_id"] is None
    assert rows[5]["key"] == b"BHP"
    assert table["source_offset"].to_pylist() == [5, 10]  # sorted by rejected_at


def test_keep_last_keeps_the_latest_row_per_key_in_batch_order() -> None:
    events = [
        ev(1, company(company_name="old"), topic=REFERENCE_TOPIC),
        ev(2, company(company_id=2), topic=REFERENCE_TOPIC),
        ev(3, company(company_name="new"), topic=REFERENCE_TOPIC),
    ]
    table = keep_last(companies_to_arrow(events, updated_at=T0), ["company_id"])
    assert table.num_rows == 2
    assert {r["company_id"]: r["company_name"] for r in table.to_pylist()} == {1: "new", 2: "BHP Group Ltd"}
    assert table["kafka_offset"].to_pylist() == [2, 3]


class CountingBuild:
    """A build that records how often it ran; int8 overflows for items outside -128..127."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items: Sequence[int]) -> pa.Table:
        self.calls += 1
        return pa.table({"x": pa.array(list(items), pa.int8())})


def test_rows_to_arrow_on_a_clean_batch_costs_one_build() -> None:
    build = CountingBuild()
    table, failed = rows_to_arrow(build, list(range(100)))
    assert build.calls == 1 and failed == []
    assert table is not None and table["x"].to_pylist() == list(range(100))


def test_rows_to_arrow_isolates_the_rows_that_do_not_convert_and_keeps_the_order() -> None:
    items = [5, 300, *range(20), -1000, 7, 128]
    build = CountingBuild()
    table, failed = rows_to_arrow(build, items)
    assert table is not None and table["x"].to_pylist() == [5, *range(20), 7]
    assert [item for item, _ in failed] == [300, -1000, 128]
    assert all(reason and "\n" not in reason for _, reason in failed)
    assert build.calls <= 1 + 2 * 3 * 5 + 1  # bisection: about 2 builds per level per bad row, then one rebuild


def test_rows_to_arrow_with_nothing_convertible() -> None:
    assert rows_to_arrow(CountingBuild(), [1000, 2000]) == (None, [(1000, ANY), (2000, ANY)])
    build = CountingBuild()
    assert rows_to_arrow(build, []) == (None, []) and build.calls == 0


def test_rows_to_arrow_lets_a_bug_through() -> None:
    def broken(items: Sequence[int]) -> pa.Table:
        raise RuntimeError("a bug, not a row")

    with pytest.raises(RuntimeError):
        rows_to_arrow(broken, [1])


def test_rows_to_arrow_with_events_to_arrow_keeps_the_table_order() -> None:
    events = [
        ev(0, trade(exchange_timestamp=T0 + 3)),
        ev(1, trade(price=Decimal("1.0000001"))),  # does not fit decimal(18,6)
        ev(2, trade(exchange_timestamp=T0 + 1)),
        ev(3, trade(venue=None)),  # required
    ]
    table, failed = rows_to_arrow(lambda batch: events_to_arrow(TRADES, batch), events)
    assert table is not None and table.schema == arrow_schema(TRADES)
    assert table["kafka_offset"].to_pylist() == [2, 0]  # sorted like any events_to_arrow table
    assert [(e.offset, "price" in why or "venue" in why) for e, why in failed] == [(1, True), (3, True)]
