"""Merge order, --loop shifting and the rate limiter: pure functions, no Kafka."""

from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from k2.lake.arrow import events_to_arrow
from k2.lake.records import BufferedEvent
from k2.lake.schemas import QUOTES, TRADES
from k2.replay.asx_csv import Quote, Trade, data_span_ms
from k2.replay.feed import (
    Faults,
    Injected,
    TokenBucket,
    loop_shift_ms,
    merge_by_time,
    plan_faults,
    replay_plan,
    to_record,
    with_faults,
)
from k2.sequence.book import SequenceBook
from k2.sequence.track import track

P = Decimal("1.000000")


def trade(symbol: str, ts: int, seq: int) -> Trade:
    return Trade(symbol, 1, "ASX", ts, P, 1, 0, "", None, seq)


def quote(symbol: str, ts: int, seq: int) -> Quote:
    return Quote(symbol, 1, "ASX", ts, P, 1, P, 1, seq)


def test_merge_interleaves_by_time_and_keeps_ties_stable() -> None:
    bhp_trades = [trade("BHP", 10, 1), trade("BHP", 30, 2), trade("BHP", 30, 3)]
    dvn_trades = [trade("DVN", 20, 1), trade("DVN", 30, 2)]
    bhp_quotes = [quote("BHP", 5, 1), quote("BHP", 30, 2), quote("BHP", 40, 3)]
    merged = list(merge_by_time([bhp_trades, dvn_trades, bhp_quotes]))
    assert [(type(e).__name__, e.symbol, e.exchange_timestamp, e.sequence_number) for e in merged] == [
        ("Quote", "BHP", 5, 1),
        ("Trade", "BHP", 10, 1),
        ("Trade", "DVN", 20, 1),
        ("Trade", "BHP", 30, 2),  # ties: stream order, then file order
        ("Trade", "BHP", 30, 3),
        ("Trade", "DVN", 30, 2),
        ("Quote", "BHP", 30, 2),
        ("Quote", "BHP", 40, 3),
    ]


def test_loop_shift() -> None:
    assert loop_shift_ms(100, 0) == 0
    assert loop_shift_ms(100, 1) == 101
    assert loop_shift_ms(100, 3) == 303
    assert loop_shift_ms(0, 2) == 2
    with pytest.raises(ValueError):
        loop_shift_ms(-1, 1)


def test_replay_plan_loops_are_strictly_newer_and_sequences_continue() -> None:
    events = list(
        merge_by_time(
            [
                [trade("BHP", 1000, 1), trade("BHP", 1500, 2)],
                [trade("DVN", 1200, 1)],
                [quote("BHP", 1000, 1), quote("BHP", 2000, 2), quote("BHP", 2000, 3)],
            ]
        )
    )
    span = data_span_ms(events)
    assert span == 1000
    records = [to_record(e, shift, off, ingestion_ms=7) for e, shift, off in replay_plan(events, 3, span)]
    assert len(records) == 3 * len(events)
    times = [r["exchange_timestamp"] for r in records]
    per_pass = len(events)
    for i in range(1, 3):
        assert min(times[i * per_pass : (i + 1) * per_pass]) > max(times[(i - 1) * per_pass : i * per_pass])
        assert min(times[i * per_pass : (i + 1) * per_pass]) == max(times[:per_pass]) + 1 + (i - 1) * (span + 1)
    assert times == sorted(times)

    def seqs(kind: type, symbol: str) -> list[int]:
        return [
            r["sequence_number"]
            for r, (e, _, _) in zip(records, replay_plan(events, 3, span), strict=True)
            if type(e) is kind and e.symbol == symbol
        ]

    assert seqs(Trade, "BHP") == [1, 2, 3, 4, 5, 6]
    assert seqs(Trade, "DVN") == [1, 2, 3]
    assert seqs(Quote, "BHP") == list(range(1, 10))
    assert {r["ingestion_timestamp"] for r in records} == {7}


def test_a_loop_step_keeps_passes_on_the_data_days_and_sequences_continuing() -> None:
    events = list(merge_by_time([[trade("BHP", 1000, 1), trade("BHP", 1500, 2)], [quote("BHP", 1200, 1)]]))
    span = data_span_ms(events)
    plan = list(replay_plan(events, 3, span, step_ms=1))
    assert [shift for _, shift, _ in plan] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    records = [to_record(e, shift, off, ingestion_ms=7) for e, shift, off in plan]
    trades = [(r["exchange_timestamp"], r["sequence_number"]) for r, (e, _, _) in zip(records, plan, strict=True)
              if type(e) is Trade]  # fmt: skip
    assert trades == [(1000, 1), (1500, 2), (1001, 3), (1501, 4), (1002, 5), (1502, 6)]
    assert loop_shift_ms(100, 3, step_ms=1) == 3
    with pytest.raises(ValueError):
        loop_shift_ms(100, 1, step_ms=0)


def test_single_pass_is_unchanged() -> None:
    events = [trade("A", 5, 1)]
    assert list(replay_plan(events, 1, 0)) == [(events[0], 0, 0)]
    with pytest.raises(ValueError):
        list(replay_plan(events, 0, 0))


def test_to_record_is_the_avro_shape() -> None:
    record = to_record(trade("BHP", 10, 4), 100, 5, 99)
    assert record == {
        "symbol": "BHP",
        "company_id": 1,
        "exchange": "ASX",
        "exchange_timestamp": 110,
        "price": P,
        "volume": 1,
        "qualifiers": 0,
        "venue": "",
        "buyer_id": None,
        "sequence_number": 9,
        "ingestion_timestamp": 99,
    }


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_holds_the_rate_without_spinning() -> None:
    t = FakeTime()
    bucket = TokenBucket(1000, burst=10, clock=t.clock, sleep=t.sleep)
    for _ in range(5010):
        bucket.acquire()
    # 10 free (the burst), then 5000 at 1000/s: 5 s, in sleeps of at least 2 ms.
    assert t.now == pytest.approx(5.0, abs=0.003)
    assert all(s >= 0.002 - 1e-9 for s in t.slept)
    assert len(t.slept) <= 2600


def test_token_bucket_slow_rate_sleeps_per_event() -> None:
    t = FakeTime()
    bucket = TokenBucket(2, burst=1, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        bucket.acquire()
    assert t.now == pytest.approx(2.0)


def test_token_bucket_refills_while_idle_up_to_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=50, clock=t.clock, sleep=t.sleep)
    t.now = 60.0  # long idle: only `burst` tokens accrue
    for _ in range(50):
        bucket.acquire()
    assert t.slept == []
    bucket.acquire(10)
    assert sum(t.slept) == pytest.approx(0.1)


def test_token_bucket_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


# -- injected gaps and duplicates ----------------------------------------------------------------


def sample_events() -> list[Any]:
    return list(
        merge_by_time(
            [
                [trade("BHP", 10 * i, i) for i in range(1, 41)],
                [trade("DVN", 10 * i + 3, i) for i in range(1, 21)],
                [quote("BHP", 10 * i + 5, i) for i in range(1, 61)],
            ]
        )
    )


def streams(events: list[Any]) -> list[tuple[type, str]]:
    return [(type(e), e.symbol) for e in events]


def test_faults_are_reproducible_from_the_seed() -> None:
    keys = streams(sample_events())
    a = plan_faults(keys, 2, gaps=6, duplicates=5, seed=7)
    assert a == plan_faults(keys, 2, gaps=6, duplicates=5, seed=7)
    assert a != plan_faults(keys, 2, gaps=6, duplicates=5, seed=8)
    assert (len(a.drop), a.duplicates) == (6, 5)


@pytest.mark.parametrize("seed", range(20))
def test_dropped_events_are_inside_their_stream_and_never_adjacent(seed: int) -> None:
    events = sample_events()
    loops = 2
    faults = plan_faults(streams(events), loops, gaps=15, duplicates=0, seed=seed)
    plan = list(replay_plan(events, loops, data_span_ms(events)))
    by_stream: dict[tuple[type, str], list[tuple[int, int]]] = {}
    for pos, (e, _, off) in enumerate(plan):
        by_stream.setdefault((type(e), e.symbol), []).append((pos, e.sequence_number + off))
    for members in by_stream.values():
        dropped = [i for i, (pos, _) in enumerate(members) if pos in faults.drop]
        assert 0 not in dropped and len(members) - 1 not in dropped
        assert all(b - a > 1 for a, b in itertools.pairwise(dropped))


def test_with_faults_drops_and_repeats_what_it_reports() -> None:
    events = sample_events()
    faults = plan_faults(streams(events), 1, gaps=4, duplicates=3, seed=1, max_delay=5)
    injected: list[Injected] = []
    sent = list(with_faults(replay_plan(events, 1, data_span_ms(events)), faults, injected))
    assert len(sent) == len(events) - 4 + 3
    gaps = [i for i in injected if i.fault == "gap"]
    dups = [i for i in injected if i.fault == "duplicate"]
    assert len(gaps) == 4 and len(dups) == 3
    sent_keys = Counter((type(e), e.symbol, e.sequence_number) for e, _, _ in sent)
    for g in gaps:
        assert (g.kind, g.symbol, g.sequence_number) not in sent_keys
    for d in dups:
        assert sent_keys[(d.kind, d.symbol, d.sequence_number)] == 2


@pytest.mark.parametrize("loops", [1, 3])
def test_sequence_tracking_finds_exactly_the_injected_faults(loops: int) -> None:
    """The replay's faults and K2's classifier agree: every gap and duplicate, nothing else."""
    events = sample_events()
    faults = plan_faults(streams(events), loops, gaps=8, duplicates=6, seed=3)
    injected: list[Injected] = []
    by_kind: dict[type, list[BufferedEvent]] = {Trade: [], Quote: []}
    for offset, (e, shift, off) in enumerate(
        with_faults(replay_plan(events, loops, data_span_ms(events)), faults, injected)
    ):
        by_kind[type(e)].append(BufferedEvent("t", 0, offset, to_record(e, shift, off, ingestion_ms=offset)))
    found_gaps, found_dups = [], []
    for kind, table in ((Trade, TRADES), (Quote, QUOTES)):
        book = SequenceBook({}, 1000)
        buffered = by_kind[kind]
        for start in range(0, len(buffered), 700):  # batches, as a worker takes them
            batch = buffered[start : start + 700]
            result = track("t", events_to_arrow(table, batch, sort=False), book, 0, now_ms=0)
            found_gaps += [(kind, g.symbol, g.expected, g.received) for g in result.gaps]
            found_dups += [(kind, batch[row].record["symbol"], v.outcome.label) for row, v in result.rejected]
    assert sorted(found_gaps, key=str) == sorted(
        ((i.kind, i.symbol, i.sequence_number, i.sequence_number + 1) for i in injected if i.fault == "gap"), key=str
    )
    assert sorted(found_dups, key=str) == sorted(
        ((i.kind, i.symbol, "duplicate") for i in injected if i.fault == "duplicate"), key=str
    )


def test_too_many_faults_is_a_value_error() -> None:
    keys = streams([trade("A", i, i) for i in range(1, 6)])
    with pytest.raises(ValueError):
        plan_faults(keys, 1, gaps=3, duplicates=0, seed=0)  # 5 events: at most 2 non-adjacent inner ones
    with pytest.raises(ValueError):
        plan_faults(keys, 1, gaps=0, duplicates=6, seed=0)
    assert plan_faults(keys, 1, gaps=0, duplicates=0, seed=0) == Faults()


def test_fan_out_copies_every_company_as_instruments_of_their_own() -> None:
    from k2.replay.asx_csv import ReferenceRow
    from k2.replay.feed import INSTRUMENT_ID_STEP, fan_out

    events = [trade("BHP", 10, 1), trade("DVN", 11, 1), trade("BHP", 12, 2)]
    reference = [ReferenceRow(7078, "BHP", "BHP Ltd", "AU1", "2001-01-01", None)]
    out, companies = fan_out(events, reference, 3)
    assert [(e.symbol, e.sequence_number) for e in out[:3]] == [("BHP", 1), ("BHP.1", 1), ("BHP.2", 1)]
    assert len(out) == 9 and [e.exchange_timestamp for e in out] == sorted(e.exchange_timestamp for e in out)
    assert [(c.symbol, c.company_id) for c in companies] == [
        ("BHP", 7078),
        ("BHP.1", 7078 + INSTRUMENT_ID_STEP),
        ("BHP.2", 7078 + 2 * INSTRUMENT_ID_STEP),
    ]
    assert out[1].company_id == events[0].company_id + INSTRUMENT_ID_STEP
    assert fan_out(events, reference, 1) == (events, reference)
    with pytest.raises(ValueError):
        fan_out(events, reference, 0)
