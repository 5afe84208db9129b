"""The value audit's comparison (k2/audit/values_rows.py and values_compare.py): rows K2's definition makes
of source records compare equal, and each planted difference is named by column, offset range and both values."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.types import StringType

from k2.audit.values_compare import ABSENT, comparable, compare_columns, differs
from k2.audit.values_lake import file_by_file
from k2.audit.values_report import ColumnMismatch, ValuesReport
from k2.audit.values_rows import NOT_IN_KAFKA, RECORD
from k2.audit.values_sample import Selection, choose
from k2.cli.main import build_parser
from k2.lake.arrow import arrow_schema
from k2.lake.records import GapRecord
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, REJECTS, SEQUENCE_GAPS, TRADES

from .audit_helpers import k2_lake
from .lake_helpers import T0, TRADES_TOPIC, company, trade
from .values_helpers import (
    REF,
    REFERENCE_FEED,
    V1,
    V2,
    company_rows,
    compare,
    framed,
    gap_rows,
    records,
    reject_rows,
    replace,
    trade_rows,
)

N = 40


def v2_trades(n: int = N) -> list[bytes]:
    """Trades of writer schema v2; every other one carries a ``trade_id``."""
    return [
        framed(
            V2,
            trade(
                exchange_timestamp=T0 + i,
                price=Decimal("36.667000") + i,
                sequence_number=i + 1,
                trade_id=f"T-{i}" if i % 2 else None,
            ),
        )
        for i in range(n)
    ]


def examples(report: ValuesReport) -> dict[tuple[str, int], tuple[str, str]]:
    """(column, offset) -> (lake, source) of every example of every run."""
    return {
        (m.column, e.offset): (e.lake, e.source) for m in report.mismatches.values() for r in m.runs for e in r.examples
    }


def only(report: ValuesReport) -> ColumnMismatch:
    assert len(report.mismatches) == 1, report.render()
    return next(iter(report.mismatches.values()))


def test_rows_made_by_k2_equal_their_source() -> None:
    source = records(v2_trades())
    report = compare({TRADES: trade_rows(source)}, source)
    assert report.ok, report.render()
    assert report.compared == {TRADES: N}
    assert "values equal" in report.summary()


def test_mixed_writer_schemas_equal_their_source() -> None:
    values = [framed(V1, trade(sequence_number=i)) if i % 3 else v for i, v in enumerate(v2_trades())]
    source = records(values)
    report = compare({TRADES: trade_rows(source)}, source)
    assert report.ok, report.render()


def test_a_decimal_one_tick_off_is_named_with_both_values_at_full_scale() -> None:
    source = records(v2_trades())
    lake = replace(trade_rows(source), "price", [7], lambda p: p + Decimal("0.000001"))
    m = only(compare({TRADES: lake}, source))
    assert (m.table, m.topic, m.partition, m.column, m.rows) == (TRADES, TRADES_TOPIC, 0, "price", 1)
    assert [(r.first, r.last) for r in m.runs] == [(7, 7)]
    example = m.runs[0].examples[0]
    assert (example.offset, example.lake, example.source) == (7, "43.667001", "43.667000")


def test_a_timestamp_off_by_an_hour_is_a_range_of_utc_instants() -> None:
    source = records(v2_trades())
    lake = replace(trade_rows(source), "exchange_timestamp", range(10, 15), lambda t: t + timedelta(hours=1))
    m = only(compare({TRADES: lake}, source))
    assert m.column == "exchange_timestamp"
    assert [(r.first, r.last) for r in m.runs] == [(10, 14)]
    assert [e.offset for e in m.runs[0].examples] == [10, 11, 12]
    assert m.runs[0].examples[0].lake == "2025-06-15T16:06:40.010000Z"
    assert m.runs[0].examples[0].source == "2025-06-15T15:06:40.010000Z"
    assert "exchange_timestamp" in m.describe() and "10-14" in m.describe()


def test_an_evolved_column_missing_from_the_table_is_named_where_the_source_had_a_value() -> None:
    source = records(v2_trades())
    lake = trade_rows(source, arrow_schema(TRADES))  # the table never got the trade_id column
    m = only(compare({TRADES: lake}, source))
    assert m.column == "trade_id"
    assert m.rows == N // 2  # only the rows whose record carries a trade_id
    assert [(r.first, r.last) for r in m.runs][:2] == [(1, 1), (3, 3)]
    assert (m.runs[0].examples[0].lake, m.runs[0].examples[0].source) == (ABSENT, "'T-1'")


def test_a_null_where_the_source_has_a_value_is_named() -> None:
    source = records(v2_trades())
    lake = replace(trade_rows(source), "trade_id", [5], None)
    m = only(compare({TRADES: lake}, source))
    assert (m.column, m.runs[0].first, m.runs[0].examples[0].lake, m.runs[0].examples[0].source) == (
        "trade_id",
        5,
        "null",
        "'T-5'",
    )


def test_a_value_where_the_writer_schema_has_no_such_field_is_named() -> None:
    values = [framed(V1, trade(sequence_number=i)) for i in range(5)]
    source = records(values)
    lake = replace(trade_rows(source), "trade_id", [2], "T-2")  # a v1 record has no trade_id: K2 lands null
    m = only(compare({TRADES: lake}, source))
    assert (m.column, m.runs[0].first, m.runs[0].examples[0].lake, m.runs[0].examples[0].source) == (
        "trade_id",
        2,
        "'T-2'",
        "null",
    )


def test_a_row_for_a_record_k2_cannot_decode_differs_in_record() -> None:
    good = framed(V1, trade())
    values = [good, good + b"\x00", b"\x00\x00\x00\x00\x63" + good[5:], b"not avro", good]
    source = records(values)
    lake = trade_rows(records([good] * 5))  # as if all five had landed
    report = compare({TRADES: lake}, source)
    m = only(report)
    assert m.column == RECORD
    assert [(r.first, r.last) for r in m.runs] == [(1, 3)]
    whys = [e.source for e in m.runs[0].examples]
    assert "trailing byte" in whys[0] and "unknown_schema_id" in whys[1] and "not Confluent-framed" in whys[2]
    assert report.compared == {TRADES: 2}


def test_rows_without_a_source_record_are_counted_not_compared() -> None:
    source = records(v2_trades(10))
    lake = trade_rows(source)
    report = compare({TRADES: lake}, records(source.values[:6]))  # offsets 6-9 gone from Kafka
    assert report.ok
    assert report.compared == {TRADES: 6}
    (key, unsourced), *_ = report.unsourced.items()
    assert key == (TRADES, TRADES_TOPIC, 0, NOT_IN_KAFKA)
    assert (unsourced.rows, unsourced.low, unsourced.high) == (4, 6, 9)
    (listed,) = report.to_dict()["not_compared_rows"]
    assert (listed["table"], listed["partition"], listed["rows"], listed["low"], listed["high"]) == (TRADES, 0, 4, 6, 9)
    assert "not compared  market_data.trades  market.trades.raw/0: 4 row(s), offsets 6-9" in report.render()


def test_a_reject_with_one_header_byte_changed_is_named() -> None:
    source = records(
        [b"\x01junk", b"\x01junk2", b"\x00\x00\x00\x00\x09zz"],
        headers=[[("trace", b"abc"), ("origin", b"\x00\x01")], None, [("k", None)]],
    )
    lake = reject_rows(source)
    assert compare({REJECTS: lake}, source).ok
    assert compare({REJECTS: replace(lake, "headers", [1], [])}, source).ok  # how pyiceberg writes "none"
    changed = replace(lake, "headers", [0], lambda h: [h[0], {"key": "origin", "value": b"\x00\x02"}])
    m = only(compare({REJECTS: changed}, source))
    assert (m.table, m.column, m.runs[0].first) == (REJECTS, "headers", 0)
    assert m.runs[0].examples[0].lake == "[trace=3 bytes 616263, origin=2 bytes 0002]"
    assert m.runs[0].examples[0].source == "[trace=3 bytes 616263, origin=2 bytes 0001]"


def test_a_reject_with_other_key_or_value_bytes_or_schema_id_is_named() -> None:
    source = records([b"\x01junk", b"\x00\x00\x00\x00\x09zz", b"\x00\x80\x00\x00\x01zz"])
    lake = reject_rows(source)
    lake = replace(lake, "value", [0], b"\x01junK")
    lake = replace(lake, "key", [1], None)
    lake = replace(lake, "schema_id", [1], 8)
    lake = replace(lake, "schema_id", [2], -2147483647)  # a high-bit id is stored as null
    report = compare({REJECTS: lake}, source)
    assert examples(report) == {
        ("value", 0): ("5 bytes 016a756e4b", "5 bytes 016a756e6b"),
        ("key", 1): ("null", "2 bytes 6b31"),
        ("schema_id", 1): ("8", "9"),
        ("schema_id", 2): ("-2147483647", "null"),
    }


def test_gap_rows_are_checked_against_their_revealing_event() -> None:
    source = records([framed(V1, trade(sequence_number=s, exchange_timestamp=T0 + s)) for s in (1, 2, 5, 20)])
    gaps = [
        GapRecord(TRADES_TOPIC, 0, 2, "ASX", "BHP", 3, 5, 2, "small", T0 + 5, T0),
        GapRecord(TRADES_TOPIC, 0, 3, "ASX", "BHP", 6, 20, 14, "large", T0 + 20, T0),
    ]
    lake = {TRADES: trade_rows(source), SEQUENCE_GAPS: gap_rows(gaps)}
    assert compare(lake, source).ok
    wrong = [gaps[0]._replace(symbol="RIO", received=4), gaps[1]._replace(missing=13, severity="small")]
    report = compare({SEQUENCE_GAPS: gap_rows(wrong)}, source)
    assert examples(report) == {
        ("symbol", 2): ("'RIO'", "'BHP'"),
        ("received", 2): ("4", "5"),
        ("missing", 2): ("2", "1"),
        ("missing", 3): ("13", "14"),
        ("severity", 3): ("'small'", "'large'"),
    }


def test_companies_compare_dates_and_ignore_when_they_landed() -> None:
    source = records([framed(REF, company(company_id=i, end_date="2020-01-31" if i == 2 else None)) for i in (1, 2)])
    rows = company_rows(source)
    lake = {COMPANY_VERSIONS: rows, COMPANIES: replace(rows, "updated_at", [0], lambda t: t + timedelta(days=3))}
    report = compare(lake, source, REFERENCE_FEED)
    assert report.ok, report.render()
    assert report.compared == {COMPANY_VERSIONS: 2, COMPANIES: 2}
    shifted = replace(rows, "end_date", [1], lambda d: d + timedelta(days=1))
    m = only(compare({COMPANY_VERSIONS: shifted}, source, REFERENCE_FEED))
    assert (m.column, m.runs[0].first, m.runs[0].examples[0].lake, m.runs[0].examples[0].source) == (
        "end_date",
        1,
        "2020-02-01",
        "'2020-01-31'",
    )


def test_runs_continue_across_buckets_and_keep_their_first_examples() -> None:
    source = records(v2_trades(20))
    lake = replace(trade_rows(source), "volume", range(20), 1)
    merged = ColumnMismatch(TRADES, TRADES_TOPIC, 0, "volume")
    for rows, recs in (
        (lake.slice(0, 10), records(source.values[:10])),
        (lake.slice(10), records(source.values[10:], 10)),
    ):
        expected = trade_rows(recs).column("volume").combine_chunks()
        offsets = rows.column("kafka_offset").combine_chunks()
        for diff in compare_columns(rows.select(["volume"]), {"volume": expected}, offsets):
            merged.add(diff)  # bucket after bucket, as the audit feeds it
    assert [(r.first, r.last) for r in merged.runs] == [(0, 19)]
    assert merged.rows == 20 and merged.runs_total == 1
    assert [e.offset for e in merged.runs[0].examples] == [0, 1, 2]


@pytest.mark.parametrize(
    ("source", "lake", "equal"),
    [
        (
            pa.array([Decimal("1.500000")], pa.decimal128(18, 6)),
            pa.array([Decimal("1.5")], pa.decimal128(10, 1)),
            [True],
        ),
        (
            pa.array([Decimal("1.500001")], pa.decimal128(18, 6)),
            pa.array([Decimal("1.5")], pa.decimal128(10, 1)),
            [False],
        ),
        (pa.array([7, None], pa.int32()), pa.array([7, None], pa.int64()), [True, True]),
        (pa.array(["2014-03-10", "20140310"]), pa.array([16139, 16139], pa.date32()), [True, False]),
        (pa.array([float("nan"), 1.0], pa.float64()), pa.array([float("nan"), None], pa.float32()), [True, False]),
        (pa.array([0], pa.timestamp("us", "UTC")), pa.array([0], pa.timestamp("us")), [True]),
        (pa.array([0], pa.timestamp("us", "UTC")), pa.array([3_600_000_000], pa.timestamp("us", "+01:00")), [False]),
    ],
)
def test_values_compare_by_value_across_the_types_k2_maps(source: pa.Array, lake: pa.Array, equal: list[bool]) -> None:
    pair = comparable(source, lake)
    assert pair is not None
    assert [not d for d in differs(*pair).to_pylist()] == equal


def test_types_without_an_equality_differ_wherever_a_value_is() -> None:
    assert comparable(pa.array(["1"]), pa.array([1])) is None


def test_a_sample_is_a_seeded_share_of_each_partitions_blocks() -> None:
    bounds = {0: (0, 1_000_000), 1: (250_000, 260_000), 2: (5, 5)}
    everything = choose(TRADES_TOPIC, bounds, 50_000, None, 0)
    assert everything.blocks is None and everything.checked(0) is None
    sample = choose(TRADES_TOPIC, bounds, 50_000, 0.1, 7)
    assert sample.totals == {0: 20, 1: 1}
    assert {p: len(b) for p, b in (sample.blocks or {}).items()} == {0: 2, 1: 1}
    assert sample == choose(TRADES_TOPIC, bounds, 50_000, 0.1, 7)
    assert sample.blocks != choose(TRADES_TOPIC, bounds, 50_000, 0.1, 8).blocks
    (chosen,) = [b for b in (sample.blocks or {})[1]]
    assert chosen == 5


def test_rows_outside_the_log_or_the_sample_are_not_kept() -> None:
    sample = Selection(10, {0: 15, 1: 0}, {0: frozenset({2}), 1: frozenset({0})})
    partitions = np.array([0, 0, 0, 0, 1, 1, 3])
    offsets = np.array([3, 17, 25, 31, 5, 15, 1])
    keep, gone = sample.keep(partitions, offsets)
    assert keep.tolist() == [False, False, True, False, True, False, False]
    assert gone.tolist() == [True, False, False, False, False, False, True]  # below log start; unknown partition


def test_the_report_renders_ranges_with_both_values_and_json() -> None:
    source = records(v2_trades())
    report = compare({TRADES: replace(trade_rows(source), "price", range(3, 9), Decimal("1.000000"))}, source)
    text = report.render()
    assert "differs  market_data.trades  market.trades.raw/0  price: 6 row(s) in 1 range(s): 3-8:" in text
    assert "@3 lake 1.000000 != source 39.667000" in text
    assert report.summary().startswith("VALUES DIFFER: 6 value(s) in 1 column(s)")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    (m,) = data["mismatches"]
    assert (m["column"], m["ranges"][0]["first"], m["ranges"][0]["last"]) == ("price", 3, 8)
    assert m["ranges"][0]["examples"][0] == {"offset": 3, "lake": "1.000000", "source": "39.667000"}


def test_the_cli_takes_a_sample_as_a_fraction_that_implies_values() -> None:
    parser = build_parser()
    args = parser.parse_args(["audit", "--sample", "0.25", "--seed", "3"])
    assert (args.values, args.sample, args.seed) == (False, 0.25, 3)
    for bad in ("0", "1.5", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["audit", "--sample", bad])


def test_the_lake_is_read_file_by_file_as_pyiceberg_reads_it(tmp_path: Path) -> None:
    """file_by_file uses pyiceberg's ArrowScan one task at a time (its own batch reader reads every file at once):
    the same rows as a scan, in the table's current schema (a column dropped since is gone)."""
    catalog = k2_lake(tmp_path)
    table = catalog.load_table(TRADES)
    source = records(v2_trades(30))
    with table.update_schema() as update:
        update.add_column("trade_id", StringType())
    rows = trade_rows(source)
    for start in (0, 10, 20):
        table.append(rows.slice(start, 10))
    read = file_by_file(table.scan()).read_all()
    assert read.sort_by("kafka_offset").equals(table.scan().to_arrow().sort_by("kafka_offset"))
    assert read.num_rows == 30 and "trade_id" in read.column_names
    with table.update_schema() as update:
        update.delete_column("trade_id")
    assert "trade_id" not in file_by_file(table.scan()).read_all().column_names
