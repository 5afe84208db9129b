"""Where each source partition stands: what was taken, what is durable, what may be committed.

This is the one place K2 decides which offsets are acknowledged. Per source partition:

* ``expected``: the consumer position the next batch must start at. A batch that starts
  later means records went missing between Kafka and K2 (the position, not the offsets,
  tells: offsets may legitimately skip); it is refused and the partition sought back. A
  batch that starts earlier overlaps what was taken already (a re-fetch) and is trimmed.
* ``durable`` (the *frontier*): every record below it has its row or reject (chunk,
  sequence state, rejects-topic copy) acknowledged by the broker. Batches become durable
  asynchronously and strictly in order: a batch whose writes are acked while an earlier
  one is still in flight waits for it. This is the only offset faust commits, and the
  flush commits nothing at or above it to Iceberg: a chunk above the frontier may sit on
  top of a record whose own write failed, and a mark past that record would later drop it.
* ``stopped``: fail-closed. A write that failed, or an error K2 did not classify as the
  event's fault, stops the partition: its later batches are not taken, the frontier stays
  before the failure, and the reason shows in readiness and metrics until the partition
  is revoked (its next owner starts again from the committed offset).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from faust.types import TP

__all__ = ["Admission", "Ledger", "Verdict"]


class Verdict(Enum):
    ACCEPT = "accept"
    STALE = "stale"
    """Nothing new: an older generation, or records all below the expected position."""
    DISCONTINUITY = "discontinuity"
    """The batch starts after the expected position: records between were never taken."""
    STOPPED = "stopped"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    records: Sequence[Any] = ()
    """The records to process (a re-fetched head already taken is cut off)."""
    expected: int | None = None


@dataclass
class _Pending:
    end: int
    remaining: int
    failed: BaseException | None = None


@dataclass
class _Partition:
    expected: int | None = None
    durable: int | None = None
    pending: deque[_Pending] = field(default_factory=deque)
    stopped: str | None = None
    refused: int = 0
    """Batches refused since the last accepted one (one seek back per discontinuity, not per batch)."""


class Ledger:
    """Positions of the source partitions this worker owns (single event loop; no locking needed)."""

    def __init__(self, max_pending: int = 64, on_stop: Callable[[TP, str], None] | None = None) -> None:
        self._on_stop = on_stop
        self._parts: dict[TP, _Partition] = {}
        self._max_pending = max_pending
        self._pending_total = 0
        self._changed = asyncio.Event()
        self.generation: int | None = None

    # -- assignment ------------------------------------------------------------------------

    def reset(self, positions: Mapping[TP, int | None]) -> None:
        """The consumer was positioned: each partition's next batch starts there, and all below is committed."""
        for tp, position in positions.items():
            self._drop(tp)
            self._parts[tp] = _Partition(expected=position, durable=position)
        self._notify()

    def forget(self, tps: Iterable[TP]) -> None:
        """The partitions were revoked: forget them (their next owner starts from the committed offset)."""
        for tp in tps:
            self._drop(tp)
        self._notify()

    def owned(self) -> list[TP]:
        return list(self._parts)

    # -- taking batches -----------------------------------------------------------------------

    def admit(self, tp: TP, start: int, end: int, records: Sequence[Any], generation: int | None) -> Admission:
        """Decide whether a fetched batch is taken, and which of its records; moves ``expected`` on accept."""
        part = self._parts.get(tp)
        if part is None:
            if self.generation is not None and generation != self.generation:
                return Admission(Verdict.STALE)
            part = self._parts[tp] = _Partition()
        if part.stopped is not None:
            return Admission(Verdict.STOPPED, expected=part.expected)
        if self.generation is not None and generation is not None and generation != self.generation:
            return Admission(Verdict.STALE, expected=part.expected)
        expected = part.expected
        if expected is None:
            expected = part.expected = start
            if part.durable is None:
                part.durable = start
        if start > expected:
            part.refused += 1
            return Admission(Verdict.DISCONTINUITY, expected=expected)
        if end <= expected:
            return Admission(Verdict.STALE, expected=expected)
        if start < expected:
            records = [r for r in records if r.offset >= expected]
        part.expected = end
        part.refused = 0
        return Admission(Verdict.ACCEPT, records, expected)

    def refused_once(self, tp: TP) -> bool:
        """True for the first refused batch of a discontinuity (seek back once, not per stale batch)."""
        part = self._parts.get(tp)
        return part is not None and part.refused == 1

    # -- durability ----------------------------------------------------------------------------

    def track(self, tp: TP, end: int, futures: Sequence[asyncio.Future[Any]]) -> None:
        """The writes of a taken batch ending at position ``end``; the frontier reaches ``end`` when all are acked."""
        part = self._parts.get(tp)
        if part is None:
            return
        entry = _Pending(end, len(futures))
        part.pending.append(entry)
        self._pending_total += 1
        if not futures:
            self._settle(tp, part)
            return
        callback = functools.partial(self._on_done, tp, part, entry)
        for fut in futures:
            fut.add_done_callback(callback)

    def _on_done(self, tp: TP, part: _Partition, entry: _Pending, fut: asyncio.Future[Any]) -> None:
        entry.remaining -= 1
        if fut.cancelled():
            entry.failed = entry.failed or asyncio.CancelledError("write cancelled")
        elif fut.exception() is not None:
            entry.failed = entry.failed or fut.exception()
        self._settle(tp, part)

    def _settle(self, tp: TP, part: _Partition) -> None:
        if self._parts.get(tp) is not part:
            return  # revoked or reset meanwhile: that state is gone
        while part.pending and part.pending[0].remaining <= 0:
            head = part.pending[0]
            if head.failed is not None:
                self.stop(tp, f"a write to Kafka failed: {type(head.failed).__name__}: {head.failed}")
                return
            part.pending.popleft()
            self._pending_total -= 1
            part.durable = head.end
        self._notify()

    def frontier(self, tp: TP) -> int | None:
        """Every record of ``tp`` below this position is durable (None: nothing known yet)."""
        part = self._parts.get(tp)
        return None if part is None else part.durable

    def frontiers(self) -> dict[TP, int]:
        return {tp: p.durable for tp, p in self._parts.items() if p.durable is not None}

    def in_flight(self, tps: Iterable[TP] | None = None) -> int:
        """Batches taken but not durable yet (of ``tps``, or all)."""
        if tps is None:
            return self._pending_total
        return sum(len(p.pending) for tp in tps if (p := self._parts.get(tp)) is not None)

    async def wait_capacity(self) -> None:
        """Wait while too many batches are in flight (the broker is slower than the input)."""
        while self._pending_total >= self._max_pending:
            await self._wait_change()

    async def wait_durable(self, tps: Iterable[TP], timeout_s: float) -> bool:
        """Wait until the batches of ``tps`` taken so far are durable (or failed); False on timeout."""
        tps = list(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight(tps) and not all(self._settled_or_stopped(tp) for tp in tps):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._wait_change(), remaining)
            except TimeoutError:
                return False
        return True

    def _settled_or_stopped(self, tp: TP) -> bool:
        part = self._parts.get(tp)
        return part is None or part.stopped is not None or not part.pending

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # -- failing closed -------------------------------------------------------------------------

    def stop(self, tp: TP, reason: str) -> None:
        """Take nothing more of ``tp`` until it is revoked; its frontier stays where it is."""
        part = self._parts.setdefault(tp, _Partition())
        first = part.stopped is None
        if first:
            part.stopped = reason
        self._pending_total -= len(part.pending)
        part.pending.clear()
        self._notify()
        if first and self._on_stop is not None:
            self._on_stop(tp, reason)

    def stopped(self) -> dict[TP, str]:
        return {tp: p.stopped for tp, p in self._parts.items() if p.stopped is not None}

    def _drop(self, tp: TP) -> None:
        part = self._parts.pop(tp, None)
        if part is not None:
            self._pending_total -= len(part.pending)
