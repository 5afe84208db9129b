"""Turning parsed files into a feed: time-ordered merge, ``--loop`` passes and a rate limit (all pure).

Kept apart from the Kafka producer so ordering, looping and throttling can be tested
without a broker.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from k2.replay.asx_csv import Quote, Trade

__all__ = ["Event", "TokenBucket", "loop_shift_ms", "merge_by_time", "replay_plan", "to_record"]

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


def loop_shift_ms(span_ms: int, pass_index: int) -> int:
    """How far pass ``pass_index`` (0-based) of ``--loop`` moves event times.

    ``(span + 1) * i``: the first event of pass *i* is 1 ms after the last event of pass
    *i-1*, so looped events are strictly newer than everything before them.
    """
    if span_ms < 0 or pass_index < 0:
        raise ValueError("span and pass index must be non-negative")
    return (span_ms + 1) * pass_index


def replay_plan(events: Sequence[Event], loops: int, span_ms: int) -> Iterator[tuple[Event, int, int]]:
    """``(event, time_shift_ms, sequence_offset)`` for every event of every pass, in send order.

    Sequence numbers continue across passes per symbol and per kind (trades and quotes
    are numbered separately): pass *i* adds *i* times the last number of pass 0, so a
    symbol with 92 trades numbers them 1..92, then 93..184, and so on.
    """
    if loops < 1:
        raise ValueError("loops must be at least 1")
    last_seq: dict[tuple[type, str], int] = {}
    for event in events:
        key = (type(event), event.symbol)
        if event.sequence_number > last_seq.get(key, 0):
            last_seq[key] = event.sequence_number
    for pass_index in range(loops):
        shift = loop_shift_ms(span_ms, pass_index)
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
