"""Sequence tracking on hand-made sequences: every class, its edges, re-delivery and the window bound."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from k2.lake.arrow import events_to_arrow
from k2.lake.records import BufferedEvent, GapRecord
from k2.lake.schemas import TRADES
from k2.sequence import fingerprint
from k2.sequence import track as track_module
from k2.sequence.book import BLOCK, Block, SequenceBook, decode_head, encode_head
from k2.sequence.classify import RESET_AFTER_MS, KeyState, Outcome, Verdict
from k2.sequence.fingerprint import fingerprints
from k2.sequence.track import NOT_PAYLOAD, track
from tests.unit.lake_helpers import T0, trade

TOPIC = "market.trades.raw"
HOUR = 3_600_000


class Feed:
    """Builds trades of one partition with increasing offsets (each new event one offset further)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.offset = 0

    def ev(self, seq: int | None, *, at: int = 0, symbol: str = "BHP", offset: int | None = None, **kw: Any) -> Any:
        if offset is None:
            offset = self.offset
            self.offset += 1
        record = trade(symbol=symbol, sequence_number=seq, exchange_timestamp=T0 + at, **kw)
        return BufferedEvent(TOPIC, self.partition, offset, record)

    def run(self, seqs: list[int | None], **kw: Any) -> list[Any]:
        return [self.ev(s, **kw) for s in seqs]


@dataclass
class Tracked:
    """A :class:`~k2.sequence.track.TrackResult` read back onto the events it was given."""

    accepted: list[Any]
    rejected: list[tuple[Any, Verdict]]
    gaps: list[GapRecord]
    counts: dict[str, int]
    changes: list[Any]


def outcomes(result: Tracked, events: list[Any]) -> list[str]:
    """The class of each event, in order, rebuilt from the result (accepted, gaps, rejected)."""
    rejected = {e.offset: v.outcome.label for e, v in result.rejected}
    gaps = {g.offset for g in result.gaps}
    out = []
    for e in events:
        if e.offset in rejected:
            out.append(rejected[e.offset])
        elif e.offset in gaps:
            out.append("gap")
        else:
            out.append("accepted")
    return out


def run(book: SequenceBook, events: list[Any]) -> Tracked:
    rows = events_to_arrow(TRADES, events, sort=False)
    result = track(TOPIC, rows, book, events[0].partition if events else 0, now_ms=T0 + 10 * HOUR)
    return Tracked(
        [e for e, keep in zip(events, result.keep, strict=True) if keep],
        [(events[i], v) for i, v in result.rejected],
        result.gaps,
        result.counts,
        result.changes,
    )


@pytest.fixture
def book() -> SequenceBook:
    return SequenceBook({}, size=1000)


def test_in_order_feed_counts_first_and_in_order(book: SequenceBook) -> None:
    feed = Feed()
    result = run(book, feed.run([1, 2, 3, 4, 5]))
    assert result.counts == {"first": 1, "in_order": 4}
    assert not result.gaps and not result.rejected and len(result.accepted) == 5


def test_a_small_gap_becomes_a_gap_row(book: SequenceBook) -> None:
    feed = Feed()
    events = feed.run([1, 2, 5, 6], at=1000)
    result = run(book, events)
    assert [(g.expected, g.received, g.missing, g.severity, g.offset) for g in result.gaps] == [(3, 5, 2, "small", 2)]
    gap = result.gaps[0]
    assert (gap.topic, gap.partition, gap.exchange, gap.symbol, gap.event_time) == (TOPIC, 0, "ASX", "BHP", T0 + 1000)
    assert len(result.accepted) == 4  # a gap is reported, the event still lands
    assert result.counts == {"first": 1, "in_order": 2, "gap": 1}


@pytest.mark.parametrize(("received", "missing", "severity"), [(11, 9, "small"), (12, 10, "large"), (3, 1, "small")])
def test_gap_severity_edges(book: SequenceBook, received: int, missing: int, severity: str) -> None:
    result = run(book, Feed().run([1, received]))
    assert [(g.missing, g.severity) for g in result.gaps] == [(missing, severity)]


def test_duplicate_same_payload_other_offset_is_rejected_and_the_first_kept(book: SequenceBook) -> None:
    feed = Feed()
    events = [*feed.run([1, 2, 3]), feed.ev(2, ingestion_timestamp=T0 + 99_999)]  # re-sent: new ingestion time
    result = run(book, events)
    assert outcomes(result, events) == ["accepted", "accepted", "accepted", "duplicate"]
    (dup, verdict), *_ = result.rejected
    assert dup.offset == 3 and verdict.ref == 1  # the first 2 was at offset 1
    assert [e.offset for e in result.accepted] == [0, 1, 2]


def test_same_number_different_payload_is_a_conflict(book: SequenceBook) -> None:
    feed = Feed()
    events = [*feed.run([1, 2, 3]), feed.ev(2, price=Decimal("99.000000"))]
    result = run(book, events)
    assert outcomes(result, events)[-1] == "conflict"
    assert result.counts["conflict"] == 1


def test_duplicate_of_the_last_number(book: SequenceBook) -> None:
    feed = Feed()
    events = [*feed.run([1, 2]), feed.ev(2)]
    assert outcomes(run(book, events), events)[-1] == "duplicate"


def test_late_event_is_out_of_order_not_a_duplicate(book: SequenceBook) -> None:
    feed = Feed()
    events = feed.run([1, 2, 4, 3])
    result = run(book, events)
    assert outcomes(result, events) == ["accepted", "accepted", "gap", "accepted"]
    assert result.counts == {"first": 1, "in_order": 1, "gap": 1, "out_of_order": 1}
    # ...and a second copy of the late one is a duplicate.
    again = [feed.ev(3)]
    assert outcomes(run(book, again), again) == ["duplicate"]


def test_session_reset_starts_afresh_without_alarm(book: SequenceBook) -> None:
    feed = Feed()
    run(book, feed.run(list(range(1, 101))))
    events = feed.run([1, 2, 3], at=HOUR + 1)  # numbers restart, an hour and a millisecond later
    result = run(book, events)
    assert result.counts == {"reset": 1, "in_order": 2}
    assert not result.gaps and not result.rejected


def test_reset_edges_exactly_half_and_exactly_one_hour_are_not_resets(book: SequenceBook) -> None:
    feed = Feed()
    run(book, feed.run(list(range(1, 101))))
    # 50 is exactly half of 100: not below half, so not a reset; 50 was seen with another time: conflict.
    half = [feed.ev(50, at=2 * HOUR)]
    assert run(book, half).counts == {"conflict": 1}
    # 49 is below half, but the time moved exactly one hour: not more than an hour.
    hour = [feed.ev(49, at=RESET_AFTER_MS)]
    assert run(book, hour).counts == {"conflict": 1}
    # Below half and more than an hour: a reset.
    both = [feed.ev(49, at=RESET_AFTER_MS + 1)]
    assert run(book, both).counts == {"reset": 1}


def test_reset_forgets_the_old_session_window(book: SequenceBook) -> None:
    feed = Feed()
    run(book, feed.run(list(range(1, 201))))
    run(book, feed.run([1, 2], at=2 * HOUR))
    events = feed.run([3, 4, 3], at=2 * HOUR)
    result = run(book, events)
    assert outcomes(result, events) == ["accepted", "accepted", "duplicate"]
    assert not any(k.startswith("w|0|ASX|BHP|0|") for k in book.data), "old-session blocks are deleted"


def test_untracked_without_sequence_number(book: SequenceBook) -> None:
    result = run(book, Feed().run([None, None, 1]))
    assert result.counts == {"untracked": 2, "first": 1}
    assert len(result.accepted) == 3


def test_keys_are_separate_per_symbol_and_exchange(book: SequenceBook) -> None:
    feed = Feed()
    events = [feed.ev(1, symbol="BHP"), feed.ev(1, symbol="DVN"), feed.ev(1, symbol="BHP", exchange="CHIA")]
    assert run(book, events).counts == {"first": 3}


def test_first_event_of_a_key_reveals_no_gap(book: SequenceBook) -> None:
    assert run(book, Feed().run([500, 501])).counts == {"first": 1, "in_order": 1}


# -- the window ------------------------------------------------------------------------------


def test_window_bounds_duplicate_detection_by_count() -> None:
    book = SequenceBook({}, size=3)
    feed = Feed()
    run(book, feed.run(list(range(1, 11))))
    old, recent = feed.ev(7), feed.ev(8)  # window: 8, 9, 10
    result = run(book, [old, recent])
    assert outcomes(result, [old, recent]) == ["accepted", "duplicate"]
    assert result.counts == {"out_of_order": 1, "duplicate": 1}


def test_window_blocks_out_of_the_window_are_deleted() -> None:
    book = SequenceBook({}, size=100)
    last = 300
    result = run(book, Feed().run(list(range(1, last + 1))))
    blocks = sorted(int(k.rsplit("|", 1)[1]) for k in book.data if k.startswith("w|"))
    assert blocks == list(range((last - 100 + 1) // BLOCK, last // BLOCK + 1))
    # Only blocks of the window are written; nothing below it is (a run writes its last `size` numbers only).
    written = sorted(int(k.rsplit("|", 1)[1]) for _, k, v in result.changes if v is not None and k.startswith("w|"))
    assert written == blocks
    deleted = [int(k.rsplit("|", 1)[1]) for _, k, v in result.changes if v is None]
    assert all(i < blocks[0] for i in deleted)


def test_one_write_per_key_and_block_per_batch_in_crash_safe_order(book: SequenceBook) -> None:
    feed = Feed()
    events = [feed.ev(s, symbol=sym) for s in range(1, 11) for sym in ("BHP", "DVN")]
    result = run(book, events)
    keys = [k for _, k, _ in result.changes]
    assert keys == ["w|0|ASX|BHP|0|0", "w|0|ASX|DVN|0|0", "h|0|ASX|BHP", "h|0|ASX|DVN"]
    assert all(p == 0 for p, _, _ in result.changes)
    assert max(len(v or b"") for _, _, v in result.changes) <= 12 * BLOCK


def test_a_huge_jump_does_not_walk_the_numbers_between() -> None:
    book = SequenceBook({}, size=1000)
    result = run(book, Feed().run([1, 10**15, 10**15 + 1]))
    assert [g.missing for g in result.gaps] == [10**15 - 2]
    assert len(result.changes) == 3  # block of 10**15, head, deletion of block 0


# -- re-delivery after a crash ---------------------------------------------------------------


def restore(changes: list[Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a new owner restores from the changelog: the last value per key as bytes, deletions applied."""
    data = dict(base or {})
    for _, key, value in changes:
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def verdicts(result: Tracked) -> tuple[Any, ...]:
    """Where each event went and the gap rows, minus what legitimately differs (detection time, flags)."""
    return (
        [e.offset for e in result.accepted],
        [(e.offset, v.outcome, v.ref) for e, v in result.rejected],
        [g._replace(detected_at=0) for g in result.gaps],
    )


def messy_batch(feed: Feed) -> list[Any]:
    return [
        feed.ev(4),
        feed.ev(8),  # gap 5..7
        feed.ev(6),  # late
        feed.ev(8),  # duplicate
        feed.ev(9, price=Decimal(1)),
        feed.ev(9),  # conflict
        feed.ev(2, at=3 * HOUR),  # reset
        feed.ev(5, at=3 * HOUR),  # gap 3..4
        feed.ev(5, at=3 * HOUR),  # duplicate
    ]


def test_redelivered_events_get_the_decision_they_got_the_first_time() -> None:
    feed = Feed()
    history: list[Any] = []
    book = SequenceBook({}, size=1000)
    history += run(book, feed.run([1, 2, 3])).changes
    batch = messy_batch(feed)
    first = run(book, batch)
    history += first.changes
    # The worker dies before the group commits the batch's offsets; the state's writes landed.
    again = run(SequenceBook(restore(history), size=1000), batch)
    assert verdicts(again) == verdicts(first)
    assert again.counts == {"redelivered": len(batch)}
    # ...and what follows the re-delivery is judged against the state, as if nothing happened.
    tail = [feed.ev(6, at=3 * HOUR), feed.ev(8, at=3 * HOUR)]
    book2 = SequenceBook(restore(history + again.changes), size=1000)
    assert outcomes(run(book2, tail), tail) == ["accepted", "gap"]


def test_a_crash_after_any_prefix_of_a_batch_writes_changes_no_decision() -> None:
    """Kafka keeps the order of one changelog partition: a crash persists some prefix of the writes."""
    feed = Feed()
    book = SequenceBook({}, size=1000)
    before = run(book, feed.run([1, 2, 3])).changes
    batch = messy_batch(feed)
    first = run(book, batch)
    for k in range(len(first.changes) + 1):
        data = restore(first.changes[:k], restore(before))
        again = run(SequenceBook(data, size=1000), batch)
        assert verdicts(again) == verdicts(first), f"crash after {k} of {len(first.changes)} writes"


def test_a_crash_after_any_prefix_with_a_small_window_and_many_blocks() -> None:
    feed = Feed()
    book = SequenceBook({}, size=70)
    before = run(book, feed.run(list(range(1, 150)))).changes
    batch = [*feed.run(list(range(150, 300))), feed.ev(260), feed.ev(200), feed.ev(120)]
    first = run(book, batch)
    assert [v.outcome.label for _, v in first.rejected] == ["duplicate"]
    for k in range(len(first.changes) + 1):
        again = run(SequenceBook(restore(first.changes[:k], restore(before)), size=70), batch)
        assert verdicts(again) == verdicts(first), k


def test_redelivery_beyond_the_decision_log_is_unresolved_and_lands_as_in_order() -> None:
    feed = Feed()
    book = SequenceBook({}, size=2)
    batch = feed.run([1, 3, 5, 7])  # three gaps; the log keeps the last two
    first = run(book, batch)
    again = run(SequenceBook(restore(first.changes), size=2), batch)
    assert again.counts == {"redelivered": 4, "unresolved": 2}  # offsets 0 and 1: at or below the log floor
    assert [g.offset for g in again.gaps] == [2, 3]


# -- encoding and fingerprints -----------------------------------------------------------------


def test_head_and_block_round_trip() -> None:
    state = KeyState(123, T0, 456, epoch=2, low_block=1, log=[(400, int(Outcome.GAP), 100)], log_floor=7)
    assert decode_head(encode_head(state)) == state
    block = Block()
    block.fps[3], block.offsets[3] = 2**32 - 1, 2**62
    again = Block.decode(block.encode())
    assert (again.fps[3], again.offsets[3], again.fps[0]) == (2**32 - 1, 2**62, 0)
    with pytest.raises(ValueError):
        Block.decode(b"short")


def _fingerprints(*records: dict[str, Any]) -> list[int]:
    events = [BufferedEvent(TOPIC, 0, i, r) for i, r in enumerate(records)]
    return fingerprints(events_to_arrow(TRADES, events, sort=False), NOT_PAYLOAD).tolist()


def test_fingerprint_ignores_ingestion_time_and_position_only_and_is_stable_across_processes() -> None:
    base = trade(sequence_number=5)
    same, later, other, no_buyer = _fingerprints(
        base, {**base, "ingestion_timestamp": 1}, {**base, "volume": 101}, {**base, "buyer_id": "B7"}
    )
    assert same == later  # and its offset differs too
    assert len({same, other, no_buyer}) == 3
    assert same != 0
    code = (
        "from tests.unit.test_sequence import _fingerprints; from tests.unit.lake_helpers import trade; "
        "print(_fingerprints(trade(sequence_number=5))[0])"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(printed) == same


def test_fingerprints_are_the_values_they_always_were() -> None:
    """A fingerprint outlives the worker (the changelog keeps it): a change of the function must fail here.

    The values were computed by the first release of the fingerprint (before its small-batch paths).
    """
    base = trade(sequence_number=5)
    assert _fingerprints(
        base,
        {**base, "volume": 101},
        {**base, "buyer_id": "B7"},
        {**base, "symbol": "\u00c4\u00d6", "venue": ""},
        {**base, "sequence_number": None},
    ) == [3248984218, 4098322560, 106628392, 1176234835, 1351957536]


def test_fingerprints_of_a_small_batch_equal_those_of_a_large_one() -> None:
    rng = random.Random(7)
    events = _messy_feed(rng, 2 * fingerprint.SMALL + 30)
    for i, e in enumerate(events):
        if i % 7 == 0:
            e.record["buyer_id"] = f"B{i % 5}"
    rows = events_to_arrow(TRADES, events, sort=False)
    whole = fingerprints(rows, NOT_PAYLOAD).tolist()  # Arrow's dictionary encoding, per column
    pieces = [fingerprints(rows.slice(i, 10), NOT_PAYLOAD).tolist() for i in range(0, rows.num_rows, 10)]
    assert [fp for piece in pieces for fp in piece] == whole
    assert len(set(whole)) > len(whole) // 2


# -- runs: the batch shortcut decides as event-by-event tracking does ------------------------------


def _messy_feed(rng: random.Random, n: int) -> list[BufferedEvent]:
    """Two symbols, mostly in order, with gaps, repeats (same or other payload), late events and resets."""
    feed = Feed()
    last = {"BHP": 0, "DVN": 0}
    at = 0
    out = []
    for _ in range(n):
        symbol = rng.choice(("BHP", "BHP", "BHP", "DVN"))
        roll = rng.random()
        if roll < 0.9:
            last[symbol] += 1
            seq = last[symbol]
        elif roll < 0.93:
            last[symbol] += rng.randint(2, 30)
            seq = last[symbol]
        elif roll < 0.97:
            seq = max(1, last[symbol] - rng.randint(0, 20))
        elif roll < 0.99:
            at += 2 * HOUR
            last[symbol] = seq = 1
        else:
            seq = None
        at += rng.randint(0, 5)
        price = Decimal(rng.choice((1, 1, 1, 2)))
        out.append(feed.ev(seq, at=at, symbol=symbol, price=price))
    return out


def _one_by_one(book: SequenceBook, events: list[BufferedEvent]) -> list[str]:
    """The reference: every event through Cursor.track, one at a time (no runs)."""
    labels = []
    rows = events_to_arrow(TRADES, events, sort=False)
    fps = fingerprints(rows, NOT_PAYLOAD).tolist()
    for e, fp in zip(events, fps, strict=True):
        seq = e.record["sequence_number"]
        if seq is None:
            labels.append("untracked")
            continue
        cursor = book.cursor(e.partition, e.record["exchange"], e.record["symbol"])
        verdict = cursor.track(seq, e.record["exchange_timestamp"], fp, e.offset, book.size)
        labels.append(verdict.outcome.label)
    book.changes()
    return labels


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("paths", ["as shipped", "arrow grouping, runs of any length"])
def test_runs_decide_exactly_as_one_event_at_a_time(seed: int, paths: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if paths != "as shipped":  # batches of any size grouped by Arrow; every key of 2+ events tried as a run
        monkeypatch.setattr(track_module, "SMALL_BATCH", 0)
        monkeypatch.setattr(track_module, "SHORT_RUN", 0)
    rng = random.Random(seed)
    events = _messy_feed(rng, 3000)
    size = rng.choice((16, 50, 1000))
    batched, single = SequenceBook({}, size=size), SequenceBook({}, size=size)
    got: list[str] = []
    expected: list[str] = []
    i = 0
    while i < len(events):
        batch = events[i : i + rng.randint(1, 400)]
        i += len(batch)
        rows = events_to_arrow(TRADES, batch, sort=False)
        result = track(TOPIC, rows, batched, 0, now_ms=T0 + 100 * HOUR)
        rejected = dict(result.rejected)
        gaps = {g.offset for g in result.gaps}
        for row, e in enumerate(batch):
            if row in rejected:
                got.append(rejected[row].outcome.label)
            elif e.offset in gaps:
                got.append("gap")
            elif e.record["sequence_number"] is None:
                got.append("untracked")
            else:
                got.append("kept")
        expected += _one_by_one(single, batch)
    simplified = ["kept" if x in ("first", "in_order", "out_of_order", "reset") else x for x in expected]
    assert got == simplified
    encode = lambda data: {  # noqa: E731
        k: v.encode() if isinstance(v, Block) else encode_head(v) if isinstance(v, KeyState) else v
        for k, v in data.items()
    }
    assert encode(batched.data) == encode(single.data)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("paths", ["as shipped", "arrow grouping, runs of any length"])
def test_a_fetchs_partitions_tracked_joined_decide_as_each_alone(
    seed: int, paths: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the batches of one fetch are tracked in one call; a key is (partition, exchange, symbol)."""
    if paths != "as shipped":
        monkeypatch.setattr(track_module, "SMALL_BATCH", 0)
        monkeypatch.setattr(track_module, "SHORT_RUN", 0)
    rng = random.Random(seed)
    feeds = [[e._replace(partition=p) for e in _messy_feed(rng, 600)] for p in range(3)]  # the same symbols
    joined, alone = SequenceBook({}, size=50), SequenceBook({}, size=50)
    cursor = [0, 0, 0]
    while any(c < len(f) for c, f in zip(cursor, feeds, strict=True)):
        batches = []
        for p, feed in enumerate(feeds):
            n = rng.choice((0, 1, 5, 20, 60))
            batches.append(feed[cursor[p] : cursor[p] + n])
            cursor[p] += n
        batches = [b for b in batches if b]
        if not batches:
            continue
        each = [track(TOPIC, events_to_arrow(TRADES, b, sort=False), alone, b[0].partition, now_ms=T0) for b in batches]
        rows = events_to_arrow(TRADES, [e for b in batches for e in b], sort=False)
        whole = track(TOPIC, rows, joined, None, now_ms=T0)
        starts = [0]
        for b in batches:
            starts.append(starts[-1] + len(b))
        assert whole.keep.tolist() == [k for r in each for k in r.keep.tolist()]
        assert whole.rejected == [(starts[i] + row, v) for i, r in enumerate(each) for row, v in r.rejected]
        assert whole.gaps == [g for r in each for g in r.gaps]
        assert whole.new_gaps == [g for r in each for g in r.new_gaps]
        for b, r in zip(batches, each, strict=True):
            assert [c for c in whole.changes if c[0] == b[0].partition] == r.changes
        assert len(whole.changes) == sum(len(r.changes) for r in each)
        summed: dict[str, int] = {}
        for r in each:
            for label, n in r.counts.items():
                summed[label] = summed.get(label, 0) + n
        assert whole.counts == summed
    assert joined.data.keys() == alone.data.keys()
