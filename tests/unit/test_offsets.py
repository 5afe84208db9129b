"""Exactly-once bookkeeping: summary keys, cumulative marks, what a replay drops."""

from __future__ import annotations

import pytest

from k2.lake.arrow import events_to_arrow, rejects_to_arrow
from k2.lake.offsets import (
    COMMIT_ID_KEY,
    WORKER_ID_KEY,
    batch_offsets,
    filter_committed_rows,
    merge_offsets,
    offset_key,
    offsets_from_summary,
    summary_properties,
)
from k2.lake.schemas import KAFKA_POSITION, REJECT_POSITION, TRADES

from .lake_helpers import QUOTES_TOPIC, TRADES_TOPIC, reject, trade_events


def test_summary_round_trip_with_dotted_topics() -> None:
    offsets = {("market.trades.raw", 0): 41, ("market.trades.raw", 11): 7, ("a-b_c", 3): 0}
    props = summary_properties(offsets, commit_id="c-1", worker_id="host:42")
    assert props["k2.offsets.market.trades.raw.0"] == "41"
    assert props["k2.offsets.market.trades.raw.11"] == "7"
    assert props[COMMIT_ID_KEY] == "c-1"
    assert props[WORKER_ID_KEY] == "host:42"
    assert all(isinstance(v, str) for v in props.values())
    # Other summary keys (Iceberg's own statistics) are ignored.
    assert offsets_from_summary({**props, "added-records": "5", "operation": "append"}) == offsets


def test_offset_key() -> None:
    assert offset_key("market.quotes.raw", 5) == "k2.offsets.market.quotes.raw.5"


@pytest.mark.parametrize(
    "summary", [{"k2.offsets.topic": "1"}, {"k2.offsets.t.x": "1"}, {"k2.offsets..1": "1"}, {"k2.offsets.t.1": "x"}]
)
def test_malformed_marks_are_loud(summary: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        offsets_from_summary(summary)


def test_empty_summary_means_nothing_committed() -> None:
    assert offsets_from_summary({}) == {}


def test_merge_is_a_cumulative_max() -> None:
    previous = {("t", 0): 10, ("t", 1): 5}
    new = {("t", 0): 8, ("t", 1): 9, ("t", 2): 0}
    assert merge_offsets(previous, new) == {("t", 0): 10, ("t", 1): 9, ("t", 2): 0}
    assert merge_offsets({}, new) == new
    assert merge_offsets(previous, {}) == previous
    assert previous == {("t", 0): 10, ("t", 1): 5}  # inputs untouched


def test_filter_rows_of_a_single_topic_table() -> None:
    batch = events_to_arrow(TRADES, trade_events(0, range(5)) + trade_events(1, range(3)))
    committed = {(TRADES_TOPIC, 0): 2, (TRADES_TOPIC, 1): 0, (QUOTES_TOPIC, 0): 100}
    kept, dropped = filter_committed_rows(batch, committed, KAFKA_POSITION, TRADES_TOPIC)
    assert dropped == 4
    assert sorted(zip(kept["kafka_partition"].to_pylist(), kept["kafka_offset"].to_pylist(), strict=True)) == [
        (0, 3),
        (0, 4),
        (1, 1),
        (1, 2),
    ]
    same, none = filter_committed_rows(batch, {}, KAFKA_POSITION, TRADES_TOPIC)
    assert same is batch
    assert none == 0
    with pytest.raises(ValueError):
        filter_committed_rows(batch, committed, KAFKA_POSITION)


def test_filter_rows_of_the_rejects_table() -> None:
    batch = rejects_to_arrow([reject(TRADES_TOPIC, 0, 5), reject(QUOTES_TOPIC, 0, 5), reject(QUOTES_TOPIC, 0, 6)])
    kept, dropped = filter_committed_rows(batch, {(QUOTES_TOPIC, 0): 5}, REJECT_POSITION)
    assert dropped == 1
    assert sorted(zip(kept["source_topic"].to_pylist(), kept["source_offset"].to_pylist(), strict=True)) == [
        (QUOTES_TOPIC, 6),
        (TRADES_TOPIC, 5),
    ]


def test_batch_offsets() -> None:
    batch = events_to_arrow(TRADES, trade_events(0, range(5)) + trade_events(3, range(10, 12)))
    assert batch_offsets(batch, KAFKA_POSITION, TRADES_TOPIC) == {(TRADES_TOPIC, 0): 4, (TRADES_TOPIC, 3): 11}
    rejects = rejects_to_arrow([reject(TRADES_TOPIC, 0, 5), reject(QUOTES_TOPIC, 0, 9), reject(QUOTES_TOPIC, 0, 6)])
    assert batch_offsets(rejects, REJECT_POSITION) == {(TRADES_TOPIC, 0): 5, (QUOTES_TOPIC, 0): 9}
    assert batch_offsets(batch.slice(0, 0), KAFKA_POSITION, TRADES_TOPIC) == {}


def test_summary_of_a_replayed_batch_changes_nothing() -> None:
    events = trade_events(0, range(3))
    committed = {(e.topic, e.partition): e.offset for e in events}
    batch = events_to_arrow(TRADES, events)
    kept, dropped = filter_committed_rows(batch, committed, KAFKA_POSITION, TRADES_TOPIC)
    assert (kept.num_rows, dropped) == (0, 3)
    assert merge_offsets(committed, {(e.topic, e.partition): e.offset for e in events}) == committed
