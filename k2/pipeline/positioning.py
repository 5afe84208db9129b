"""Positioning: the lifecycle's *positioning* partitions sought to their start, supervised and bounded.

One long-lived task (:meth:`Positioner.run`) does every positioning of the worker, one attempt
at a time, so no attempt is ever fire-and-forget: an attempt that fails is logged with its
cause and tried again, one that a rebalance makes stale is cancelled and replaced. An
attempt, for the partitions :meth:`~k2.pipeline.lifecycle.Lifecycle.to_position` names:

1. waits for the lake (the catalog loaded); meanwhile the partitions say so (readiness);
2. keeps back partitions whose table partitions (buffer chunks, sequence state: co-partitioned
   changelogs) this worker was not assigned: consuming them would write state another worker
   owns. That happens when a source topic grew and its changelogs have not yet (see
   :mod:`k2.admin.topics`); the next rebalance brings them together;
3. reads the lake's marks and the log starts (bounded; an unavailable service is waited out);
4. computes the starts (:func:`~k2.pipeline.positions.start_positions`, pure), drops
   restored chunks at or after them, seeks each partition still positioning in this
   generation (a partition the consumer no longer holds is skipped: its revocation is on
   the way), resets the ledger, and hands them to the lifecycle as consuming.

Between attempts the same task watches the bounds (:meth:`Positioner.check_bounds`): a
partition not consuming ``K2_POSITION_TIMEOUT_S`` after faust restored its tables is named
by readiness and counted by ``k2_partitions_not_consuming``; a partition faust restored but
never sought is positioned from the group's committed offset; and one still not consuming
``K2_STUCK_EXIT_S`` later for no reason outside K2 makes the worker exit non-zero, so the
group gives its partitions to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiokafka.errors import IllegalStateError
from faust.types import TP

from k2.buffer.store import ChunkStore
from k2.errors import K2Error, describe, is_unavailable
from k2.lake.records import TopicPartition
from k2.lake.writer import LakeRegressed
from k2.metrics import K2Metrics
from k2.pipeline.lifecycle import Lifecycle, Phase
from k2.pipeline.positions import start_positions

__all__ = ["ConsumerPort", "PartitionsStuck", "Positioner", "Starts"]

log = logging.getLogger(__name__)


class PartitionsStuck(K2Error):
    """Partitions this worker holds could not be positioned within their bound, for no reason outside K2."""


class ConsumerPort(Protocol):
    """What positioning needs of faust's consumer."""

    def assignment(self) -> set[TP]: ...
    def pause_partitions(self, tps: Iterable[TP]) -> None: ...
    def resume_partitions(self, tps: Iterable[TP]) -> None: ...
    async def seek(self, partition: TP, offset: int) -> None: ...
    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]: ...
    def committed_offsets(self) -> dict[TP, int | None]: ...


@dataclass(frozen=True)
class Starts:
    """What an attempt decided: per partition its start (None: the consumer's reset policy), and the marks read."""

    starts: dict[TP, int | None]
    marks: dict[TopicPartition, int]


class Positioner:
    """Seeks the lifecycle's positioning partitions to their start (see the module docstring)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        consumer: Callable[[], ConsumerPort],
        read_marks: Callable[[], Awaitable[dict[TopicPartition, int]]],
        lake_ready: asyncio.Event,
        lake_error: Callable[[], str | None],
        stores: Mapping[str, ChunkStore],
        tables_ready: Callable[[set[TP]], Awaitable[set[TP]]],
        metrics: K2Metrics,
        *,
        timeout_s: float,
        position_bound_s: float,
        stuck_exit_s: float,
        restoring: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifecycle = lifecycle
        self._consumer = consumer
        self._read_marks = read_marks
        self._lake_ready = lake_ready
        self._lake_error = lake_error
        self._stores = stores
        self._tables_ready = tables_ready
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.position_bound_s = position_bound_s
        self.stuck_exit_s = stuck_exit_s
        self._restoring = restoring
        self._clock = clock
        self._wake = asyncio.Event()
        self._attempt: asyncio.Task[set[TP]] | None = None
        self.floors: dict[TP, int] = {}
        """Where partitions whose lake went back (:class:`LakeRegressed`) start, at the latest, when next positioned."""
        self.on_positioned: Callable[[Starts, set[TP]], None] = lambda starts, done: None
        """Called with what an attempt decided and the partitions it positioned (the pipeline resets its ledger)."""
        self.on_regressed: Callable[[LakeRegressed, set[TP]], None] = lambda exc, tps: None
        self.overdue: dict[TP, str] = {}
        """Partitions past their bound, with why (readiness names them)."""

    # -- control ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed (a seek, a revocation, the lake loaded): look at the lifecycle again."""
        self._wake.set()

    def pause(self, tps: Iterable[TP]) -> None:
        """Stop fetching ``tps`` until they are positioned (a fetch in flight is dropped by the consumer)."""
        tps = set(tps)
        if tps:
            with contextlib.suppress(Exception):  # the consumer may be stopping; positioning seeks anyway
                self._consumer().pause_partitions(tps)

    def cancel(self) -> None:
        """Abandon the attempt in flight (its partitions were revoked or sought again): it is retried if due."""
        if self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()
        self.wake()

    async def run(self, should_stop: Callable[[], bool], tick_s: float = 1.0) -> None:
        """The one positioning task: attempts, retries with backoff, the bounds. Raises :class:`PartitionsStuck`."""
        delay = 0.0
        last_failure: str | None = None
        while not should_stop():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(tick_s, delay))
            self._wake.clear()
            self.check_bounds()
            todo = self.lifecycle.to_position()
            if not todo:
                delay = 0.0
                continue
            self._attempt = asyncio.ensure_future(self._position(todo))
            try:
                await asyncio.wait([self._attempt])
            finally:
                attempt, self._attempt = self._attempt, None
            if attempt.cancelled():
                delay = 0.0  # superseded by a seek or a revocation: look again at once
                continue
            exc = attempt.exception()
            if exc is None:
                delay = 0.0 if not (self.lifecycle.to_position() & todo) else min(max(delay * 2, 1.0), 15.0)
                continue
            delay = min(max(delay * 2, 1.0), 15.0)
            what = describe(exc)
            if is_unavailable(exc):
                self.lifecycle.waiting(todo, what)
            else:  # the traceback once per cause; the same cause again in one line
                log.error(
                    "positioning %d partition(s) failed%s; retrying in %.0fs",
                    len(todo),
                    "" if what != last_failure else f" again ({what})",
                    delay,
                    exc_info=exc if what != last_failure else None,
                )
                self.lifecycle.waiting(todo, None)
            last_failure = what

    # -- the bounds ----------------------------------------------------------------------------

    def check_bounds(self) -> None:
        """Readiness and metrics for partitions past their bound; exit for those stuck with no outside cause."""
        now = self._clock()
        lc = self.lifecycle
        restored_at = lc.restored_at if lc.restored_generation == lc.generation else None
        if restored_at is not None and now - restored_at > self.position_bound_s / 3:
            stranded = {tp for tp, s in lc.not_consuming().items() if s.phase is Phase.ASSIGNED}
            if stranded:
                # faust restored this generation's tables but its seek did not reach these (a seek that
                # raised, or one that named an older assignment): position them from the committed offset.
                log.warning(
                    "%d partition(s) restored but never sought; positioning them from the committed offsets",
                    len(stranded),
                )
                committed = self._consumer().committed_offsets()
                self.pause(lc.sought({tp: committed.get(tp) for tp in stranded}))
                self.wake()
        self.overdue = lc.overdue(now, restore_bound_s=float("inf"), position_bound_s=self.position_bound_s)
        by_topic: dict[str, int] = {}
        for tp in self.overdue:
            by_topic[tp.topic] = by_topic.get(tp.topic, 0) + 1
        self.metrics.publish_not_consuming(by_topic)
        # Stuck for no reason outside K2: positioning without a named outside cause, or assigned while
        # faust is not restoring anything (its restore of this generation is over or never began).
        restore_bound = float("inf") if self._restoring() else self.stuck_exit_s
        stuck = {
            tp: why
            for tp, why in lc.overdue(now, restore_bound_s=restore_bound, position_bound_s=self.stuck_exit_s).items()
            if (s := lc.state(tp)) is not None and s.waiting_for is None
        }
        if stuck:
            raise PartitionsStuck(
                "partition(s) not consuming for no reason outside K2, exiting so the group moves them: "
                + "; ".join(f"{tp.topic}/{tp.partition}: {why}" for tp, why in sorted(stuck.items()))
            )

    # -- one attempt ---------------------------------------------------------------------------

    async def _position(self, tps: set[TP]) -> set[TP]:
        lc = self.lifecycle
        generation = lc.generation
        lc.attempt(tps)
        if not self._lake_ready.is_set():
            lc.waiting(tps, f"the Iceberg catalog is not loaded: {self._lake_error() or 'loading'}")
            await self._lake_ready.wait()
            lc.waiting(tps, None)
        apart = tps - await asyncio.wait_for(self._tables_ready(tps), self.timeout_s)
        lc.waiting(
            apart,
            "its table partitions (buffer, sequence state) are not assigned to this worker: a source topic "
            "grew and its changelog topics did not yet; waiting for them and the next rebalance",
        )
        tps = tps - apart
        if not tps:
            return set()
        try:
            marks = await asyncio.wait_for(self._read_marks(), self.timeout_s * 2)
        except LakeRegressed as exc:
            self.on_regressed(exc, tps)
            marks = exc.marks
        log_starts = await asyncio.wait_for(self._consumer().earliest_offsets(*tps), self.timeout_s)
        committed = {tp: s.committed for tp in tps if (s := lc.state(tp)) is not None}
        floors = {tp: self.floors[tp] for tp in tps if tp in self.floors}
        plan = start_positions(
            committed,
            {tp: marks.get((tp.topic, tp.partition)) for tp in tps},
            {tp: self._stores[tp.topic].chunk_keys({tp.partition}) for tp in tps if tp.topic in self._stores},
            {tp: log_starts.get(tp) for tp in tps},
            floors,
        )
        for tp, (lost_from, lost_to) in plan.lost.items():
            self.metrics.offsets_lost_to_retention.labels(tp.topic).inc(lost_to - lost_from)
            log.error(
                "%s/%d: offsets %d-%d were never landed and Kafka no longer holds them (retention): they are lost",
                tp.topic,
                tp.partition,
                lost_from,
                lost_to - 1,
            )
        for topic, store in self._stores.items():
            untrusted = [key for tp in tps if tp.topic == topic for key in plan.discard.get(tp, ())]
            if untrusted:
                log.info(
                    "%s: %d restored chunk(s) at or after the start dropped (rebuilt from Kafka)", topic, len(untrusted)
                )
                await store.remove(untrusted)
        consumer = self._consumer()
        sought: set[TP] = set()
        for tp in sorted(tps):
            state = lc.state(tp)
            if state is None or state.phase is not Phase.POSITIONING or state.generation != generation:
                continue  # revoked or sought again meanwhile
            start = plan.starts.get(tp)
            if start is not None:
                try:
                    await consumer.seek(tp, start)
                except IllegalStateError:
                    # The consumer no longer holds it: a rebalance is under way and will revoke it.
                    log.info("%s/%d not positioned: the consumer no longer holds it", tp.topic, tp.partition)
                    continue
                if start != state.committed:
                    log.info(
                        "%s/%d starts at %d (group committed %s, lake mark %s)",
                        tp.topic,
                        tp.partition,
                        start,
                        state.committed,
                        marks.get((tp.topic, tp.partition)),
                    )
            sought.add(tp)
        for tp in sought:
            self.floors.pop(tp, None)
        done = lc.positioned(sought, generation)
        self.on_positioned(Starts({tp: plan.starts.get(tp) for tp in done}, dict(marks)), done)
        if done:
            consumer.resume_partitions(done)
        return done
