"""Turning parsed files into a feed: time-ordered merge, ``--loop`` passes and a rate limit (all pure).

Kept apart from the Kafka producer so ordering, looping and throttling can be tested
without a broker.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from k2.replay.asx_csv import Quote, ReferenceRow, Trade

__all__ = [
    "INSTRUMENT_ID_STEP",
    "Event",
    "Faults",
    "Injected",
    "TokenBucket",
    "fan_out",
    "loop_shift_ms",
    "merge_by_time",
    "plan_faults",
    "replay_plan",
    "to_record",
    "with_faults",
]

Event = Trade | Quote


def _event_time(event: Event) -> int:
    return event.exchange_timestamp


def merge_by_time(streams: Iterable[Sequence[Event]]) -> Iterator[Event]:
    """Merge per-file streams (each already in time order) into one stream in time order.

    This is what a consolidated feed looks like: trades and quotes of every symbol
    interleaved by exchange time. Ties keep the order of ``streams`` and, within a
    stream, file order (``heapq.merge`` is stable), so the result is deterministic.
    """
    return heapq.merge(*streams, key=_event_time)


INSTRUMENT_ID_STEP = 1_000_000
"""Company ids of the copies :func:`fan_out` makes: the original's plus ``k`` times this."""


def fan_out(
    events: Sequence[Event], reference: Sequence[ReferenceRow], instruments: int
) -> tuple[list[Event], list[ReferenceRow]]:
    """Every company and its ticks as ``instruments`` instruments: the original and copies ``SYM.1``, ``SYM.2``...

    A copy has its own symbol (so its own Kafka key, partition and sequence numbers) and
    company id (``id + k * INSTRUMENT_ID_STEP``), and the original's ticks at the same
    times. A load of many instruments spreads over a topic's partitions, as a real market
    does; the sample alone has three symbols, one of which carries 97% of the ticks, so it
    fills one partition per topic whatever their number.
    """
    if instruments < 1:
        raise ValueError("instruments must be at least 1")
    out_reference = list(reference)
    for k in range(1, instruments):
        out_reference += [_copy(r, k) for r in reference]
    out_events: list[Event] = []
    for event in events:  # each tick, then its copies: the merged feed stays in time order
        out_events.append(event)
        out_events.extend(_copy(event, k) for k in range(1, instruments))
    return out_events, out_reference


def _copy(row: Any, k: int) -> Any:
    """Copy ``k`` of a tick or a reference row (named tuples with ``symbol`` and ``company_id``)."""
    return row._replace(symbol=f"{row.symbol}.{k}", company_id=row.company_id + k * INSTRUMENT_ID_STEP)


def loop_shift_ms(span_ms: int, pass_index: int, step_ms: int | None = None) -> int:
    """How far pass ``pass_index`` (0-based) of ``--loop`` moves event times.

    ``(span + 1) * i`` by default: the first event of pass *i* is 1 ms after the last event
    of pass *i-1*, so looped events are strictly newer than everything before them.
    ``step_ms * i`` with ``--loop-step``: passes overlap in time and stay on the data's own
    days (a long benchmark load without a day partition per pass).
    """
    if span_ms < 0 or pass_index < 0:
        raise ValueError("span and pass index must be non-negative")
    if step_ms is not None:
        if step_ms < 1:
            raise ValueError("the loop step must be at least 1 ms")
        return step_ms * pass_index
    return (span_ms + 1) * pass_index


def replay_plan(
    events: Sequence[Event], loops: int, span_ms: int, step_ms: int | None = None
) -> Iterator[tuple[Event, int, int]]:
    """``(event, time_shift_ms, sequence_offset)`` for every event of every pass, in send order.

    Sequence numbers continue across passes per symbol and per kind (trades and quotes
    are numbered separately): pass *i* adds *i* times the last number of pass 0, so a
    symbol with 92 trades numbers them 1..92, then 93..184, and so on. ``step_ms``: see
    :func:`loop_shift_ms`.
    """
    if loops < 1:
        raise ValueError("loops must be at least 1")
    last_seq: dict[tuple[type, str], int] = {}
    for event in events:
        key = (type(event), event.symbol)
        if event.sequence_number > last_seq.get(key, 0):
            last_seq[key] = event.sequence_number
    for pass_index in range(loops):
        shift = loop_shift_ms(span_ms, pass_index, step_ms)
        if pass_index == 0:
            for event in events:
                yield event, 0, 0
            continue
        offsets = {key: seq * pass_index for key, seq in last_seq.items()}
        for event in events:
            yield event, shift, offsets[(type(event), event.symbol)]


def to_record(event: Event, time_shift_ms: int, sequence_offset: int, ingestion_ms: int) -> dict[str, Any]:
    """The Avro record (a dict for the serializer) of one event in one pass."""
    record = event._asdict()
    if time_shift_ms:
        record["exchange_timestamp"] += time_shift_ms
    if sequence_offset:
        record["sequence_number"] += sequence_offset
    record["ingestion_timestamp"] = ingestion_ms
    return record


@dataclass(frozen=True)
class Faults:
    """Where a replay departs from its plan, by position in the plan (pass-major, 0-based)."""

    drop: frozenset[int] = frozenset()
    """Events not sent: each one is a gap of exactly one number in its stream."""
    repeat: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """After the event at a position (sent or dropped), send these earlier events again."""

    @property
    def duplicates(self) -> int:
        return sum(len(v) for v in self.repeat.values())


def plan_faults(
    streams: Sequence[Hashable],
    loops: int,
    gaps: int,
    duplicates: int,
    seed: int,
    *,
    max_delay: int = 50,
) -> Faults:
    """Reproducible gaps and duplicates for a replay of ``loops`` passes over events whose streams are ``streams``.

    ``streams[i]`` names the numbering event ``i`` of a pass belongs to (kind and symbol:
    trades and quotes are numbered apart); numbers run on across passes. Each of the
    ``gaps`` dropped events is neither the first nor the last of its stream (so an event
    after it reveals it, and the tracking of a stream does not start after it) nor next to
    another dropped one in its stream: each is one gap of one missing number. Each of the
    ``duplicates`` events is sent, then sent again 0 to ``max_delay`` positions later.
    Same arguments, same faults (``random.Random(seed)``).

    Raises:
        ValueError: the feed is too small for that many faults.
    """
    if gaps < 0 or duplicates < 0 or loops < 1:
        raise ValueError("gaps and duplicates must be >= 0, loops >= 1")
    n = len(streams)
    total = n * loops
    members: dict[Hashable, list[int]] = {}
    rank = [0] * n
    for i, key in enumerate(streams):
        rank[i] = len(members.setdefault(key, []))
        members[key].append(i)

    def neighbours(pos: int) -> list[int]:
        """Plan positions of the previous and next event of the same stream (across passes)."""
        base = pos % n
        group = members[streams[base]]
        g = (pos // n) * len(group) + rank[base]
        out = []
        for h in (g - 1, g + 1):
            if 0 <= h < loops * len(group):
                out.append((h // len(group)) * n + group[h % len(group)])
        return out

    rng = random.Random(seed)
    dropped: set[int] = set()
    attempts = 0
    while len(dropped) < gaps:
        attempts += 1
        if attempts > 100 * gaps + 1000:
            raise ValueError(f"cannot place {gaps} gaps in a feed of {total} events")
        pos = rng.randrange(total)
        around = neighbours(pos)
        if pos in dropped or len(around) < 2 or any(p in dropped for p in around):
            continue
        dropped.add(pos)
    sent = total - len(dropped)
    if duplicates > sent:
        raise ValueError(f"cannot repeat {duplicates} of {sent} events")
    repeat: dict[int, list[int]] = {}
    chosen: set[int] = set()
    while len(chosen) < duplicates:
        pos = rng.randrange(total)
        if pos in dropped or pos in chosen:
            continue
        chosen.add(pos)
        repeat.setdefault(min(total - 1, pos + rng.randint(0, max_delay)), []).append(pos)
    return Faults(frozenset(dropped), {k: tuple(v) for k, v in sorted(repeat.items())})


class Injected(NamedTuple):
    """A fault a replay put in its feed: the stream (``Trade`` or ``Quote``), symbol and sequence number.

    For a ``gap`` the number is the one not sent (the next one, sent, reveals it); for a
    ``duplicate`` the number sent twice.
    """

    fault: str
    kind: type
    symbol: str
    sequence_number: int


def with_faults(
    plan: Iterable[tuple[Event, int, int]], faults: Faults, injected: list[Injected]
) -> Iterator[tuple[Event, int, int]]:
    """``plan`` (from :func:`replay_plan`) with ``faults`` applied, appending each fault to ``injected``."""
    originals = {pos for repeats in faults.repeat.values() for pos in repeats}
    kept: dict[int, tuple[Event, int, int]] = {}
    for pos, item in enumerate(plan):
        event, _, seq_offset = item
        if pos in faults.drop:
            injected.append(Injected("gap", type(event), event.symbol, event.sequence_number + seq_offset))
        else:
            if pos in originals:
                kept[pos] = item
            yield item
        for original in faults.repeat.get(pos, ()):
            again = kept.pop(original)
            injected.append(Injected("duplicate", type(again[0]), again[0].symbol, again[0].sequence_number + again[2]))
            yield again


class TokenBucket:
    """A rate limiter that sleeps (never spins) when the caller is ahead of ``rate`` per second.

    Credit accrues up to ``burst`` tokens while idle. A small debt is allowed before
    sleeping, because ``time.sleep`` cannot sleep for a few microseconds: sleeping once
    per couple of milliseconds keeps high rates accurate and cheap.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        min_sleep_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._min_debt = min_sleep_s * rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def acquire(self, n: float = 1.0) -> None:
        """Take ``n`` tokens, sleeping first if that would put the bucket too far in debt."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens < 0 and -self._tokens >= self._min_debt:
            self._sleep(-self._tokens / self.rate)
