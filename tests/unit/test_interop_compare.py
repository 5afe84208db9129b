"""The interop tests' comparisons (tests/interop/compare.py) find every kind of disagreement they claim to."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa

from tests.interop.compare import FILE_COLUMNS, diff_files, diff_rows, diff_snapshots, exactly_once, normal_type

UTC = dt.UTC
T0 = dt.datetime(2014, 3, 9, 21, 0, tzinfo=UTC)
INSTANT = pa.timestamp("us", tz="UTC")


def trades(
    *,
    at: pa.DataType = INSTANT,
    text: pa.DataType | None = None,
    rows: list[tuple[int, str, Decimal, dt.datetime, bytes | None]] | None = None,
) -> pa.Table:
    rows = rows or [
        (0, "BHP", Decimal("36.667000"), T0, b"\x00\x01"),
        (1, "BHP", Decimal("36.714000"), T0 + dt.timedelta(seconds=1), None),
        (2, "MWR", Decimal("0.105000"), T0 + dt.timedelta(seconds=2), b"\xff"),
    ]
    columns = list(zip(*rows, strict=True))
    schema = pa.schema(
        [
            pa.field("kafka_offset", pa.int64(), nullable=False),
            pa.field("symbol", text or pa.large_string(), nullable=False),
            pa.field("price", pa.decimal128(18, 6), nullable=False),
            pa.field("exchange_timestamp", at, nullable=False),
            pa.field("value", pa.binary()),
        ]
    )
    arrays = [list(c) for c in columns]
    if pa.types.is_timestamp(at) and at.tz is None:
        arrays[3] = [t.replace(tzinfo=None) for t in arrays[3]]
    return pa.table(arrays, schema=schema)


def test_the_same_rows_in_another_order_and_layout_agree() -> None:
    theirs = trades(text=pa.string(), at=pa.timestamp("us", tz="+00:00"))
    assert diff_rows("t", trades(), theirs.take([2, 0, 1]), key=["kafka_offset"]) == []


def test_a_decimal_at_another_scale_is_a_disagreement_even_when_the_values_are_equal() -> None:
    ours = trades()
    theirs = ours.cast(ours.schema.set(2, pa.field("price", pa.decimal128(18, 7), nullable=False)))
    assert diff_rows("t", ours, theirs) == [
        "t: the schemas differ",
        "  column 2: pyiceberg price: decimal128(18, 6) not null | spark price: decimal128(18, 7) not null",
    ]


def test_an_instant_read_as_a_local_time_is_a_disagreement() -> None:
    problems = diff_rows("t", trades(), trades(at=pa.timestamp("us")))
    assert "exchange_timestamp" in "\n".join(problems)


def test_one_byte_off_a_null_or_one_unit_of_the_last_decimal_digit_is_named_with_the_row() -> None:
    rows = [
        (0, "BHP", Decimal("36.667001"), T0, b"\x00\x01"),
        (1, "BHP", Decimal("36.714000"), T0 + dt.timedelta(seconds=1), b""),
        (2, "MWR", Decimal("0.105000"), T0 + dt.timedelta(seconds=2), b"\xfe"),
    ]
    problems = diff_rows("t", trades(), trades(rows=rows), key=["kafka_offset"])
    assert problems == [
        "t.price: 1 of 3 rows differ: [kafka_offset=0] pyiceberg Decimal('36.667000') | spark Decimal('36.667001')",
        "t.value: 2 of 3 rows differ: [kafka_offset=1] pyiceberg None | spark b''; "
        "[kafka_offset=2] pyiceberg b'\\xff' | spark b'\\xfe'",
    ]


def test_a_missing_row_is_a_disagreement() -> None:
    assert diff_rows("t", trades(), trades().slice(0, 2)) == ["t: pyiceberg reads 3 rows, spark 2"]


def test_nested_values_are_compared_too() -> None:
    headers = pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())]))
    ours = pa.table({"id": [1, 2], "headers": pa.array([[{"key": "a", "value": b"1"}], []], headers)})
    theirs = pa.table({"id": [1, 2], "headers": pa.array([[{"key": "a", "value": b"2"}], []], headers)})
    assert diff_rows("r", ours, ours) == []
    assert diff_rows("r", ours, theirs, key=["id"]) == [
        "r.headers: 1 of 2 rows differ: [id=1] pyiceberg [{'key': 'a', 'value': b'1'}] | "
        "spark [{'key': 'a', 'value': b'2'}]"
    ]


def test_normal_type_keeps_precision_scale_unit_and_zone() -> None:
    assert normal_type(pa.large_list(pa.large_string())) == pa.list_(pa.string())
    assert normal_type(pa.decimal128(18, 6)) != normal_type(pa.decimal128(38, 6))
    assert normal_type(pa.timestamp("ms", tz="UTC")) != normal_type(pa.timestamp("us", tz="UTC"))
    assert normal_type(pa.timestamp("us", tz="Australia/Sydney")) != normal_type(pa.timestamp("us", tz="UTC"))


def _snapshots(at: pa.DataType, summary: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {
            "committed_at": pa.array([dt.datetime(2026, 12, 6, 14, 0, tzinfo=UTC)]).cast(at),
            "snapshot_id": [7],
            "parent_id": pa.array([None], pa.int64()),
            "operation": ["append"],
            "manifest_list": ["file:///w/snap-7.avro"],
            "summary": pa.array([summary], pa.map_(pa.string(), pa.string())),
        }
    )


def test_snapshot_summaries_are_compared_key_by_key_and_times_as_instants() -> None:
    marks = [("k2.offsets.t.trades.0", "41"), ("added-records", "42")]
    ours = _snapshots(pa.timestamp("ms"), marks)
    assert diff_snapshots("t", ours, _snapshots(pa.timestamp("us", tz="UTC"), list(reversed(marks)))) == []
    moved = [("k2.offsets.t.trades.0", "40"), ("added-records", "42")]
    assert diff_snapshots("t", ours, _snapshots(pa.timestamp("us", tz="UTC"), moved)) == [
        "t.snapshots snapshot_id=7 summary: pyiceberg {'k2.offsets.t.trades.0': '41', 'added-records': '42'} | "
        "spark {'k2.offsets.t.trades.0': '40', 'added-records': '42'}"
    ]


def test_files_of_an_unpartitioned_table_agree_without_spark_s_partition_column() -> None:
    ours = pa.table(
        {
            "file_path": ["a.parquet"],
            **{column: [None] for column in FILE_COLUMNS},
            "record_count": [3],
            "partition": pa.array([{}], pa.struct([])),
        }
    )
    assert diff_files("t", ours, ours.drop_columns(["partition"])) == []
    theirs = ours.drop_columns(["partition"])
    other = theirs.set_column(theirs.schema.get_field_index("record_count"), "record_count", pa.array([4]))
    assert diff_files("t", ours, other) == ["t.files file_path=a.parquet record_count: pyiceberg 3 | spark 4"]
    assert diff_files("t", ours, ours.drop_columns(["file_path"])) != []


def _positions(*pairs: tuple[int, int]) -> pa.Table:
    partitions, offsets = zip(*pairs, strict=True) if pairs else ((), ())
    return pa.table(
        {"kafka_partition": pa.array(partitions, pa.int32()), "kafka_offset": pa.array(offsets, pa.int64())}
    )


def test_exactly_once_names_doubled_missing_and_foreign_rows_as_offset_ranges() -> None:
    expected = _positions((4, 0), (4, 1), (4, 2), (4, 3), (2, 11))
    delivered = _positions((4, 0), (4, 1), (4, 1), (4, 2), (4, 2), (2, 12))
    assert exactly_once("t", expected, expected) == []
    assert exactly_once("t", delivered, expected) == [
        "t: 2 rows delivered more than once, at offsets partition 4:1-2",
        "t: 2 rows missing, at offsets partition 2:11 partition 4:3",
        "t: 1 rows delivered but not expected, at offsets partition 2:12",
    ]
    assert (
        exactly_once("t", _positions((4, 0), (4, 1), (4, 2), (4, 3), (2, 11), (2, 12)), expected, more_allowed=True)
        == []
    )
