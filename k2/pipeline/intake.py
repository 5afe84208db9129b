"""Intake: the fetched batches of consuming partitions become buffered chunks, tracked until durable.

The ingest agents hand every fetch of their topic (a batch per partition) to
:meth:`Intake.take`, which takes it in blocks of at most ``K2_INGEST_BLOCK_MAX`` records
(:meth:`~k2.kafka.batches.TopicFetch.blocks`) and lets the event loop run between them, so
a large fetch does not hold timers and flushes for its whole length. A batch is taken only
when its partition is *consuming* in the batch's generation (:mod:`k2.pipeline.lifecycle`);
then, for the batches of a block together: room is reserved in the flush gate (the
buffer's bound holds with every agent at once), the schemas are resolved, the ledger admits
each batch (one that does not start where its partition's last one ended is refused and the
partition sought back), the processor classifies the admitted ones in one block and writes
each partition's part (chunks, sequence state, rejects), and the ledger tracks each
partition's writes until the broker acknowledged them all. Between the admissions and the
writes nothing waits, so a revocation finds a batch either not admitted or writing (it
waits for that).

Failure policy (fail closed): an error that classification did not turn into a reject stops
the partitions of the fetch it happened in, its blocks taken already included
(:meth:`~k2.pipeline.ledger.Ledger.stop`): nothing of those batches or after them is
acknowledged or flushed, the partitions are paused, and the log,
``k2_ingest_stopped_partitions`` and ``/k2/ready`` say why, until they are revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.types import TP

from k2.ingest.frames import Frames
from k2.ingest.processor import IngressProcessor
from k2.kafka.batches import FetchedBatch, TopicFetch
from k2.lake.writer import TableRecreated
from k2.metrics import K2Metrics
from k2.pipeline.gate import FlushGate
from k2.pipeline.ledger import Ledger, Verdict
from k2.pipeline.lifecycle import Lifecycle

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    """Takes batches of consuming partitions (see the module docstring); one per worker."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        ledger: Ledger,
        gate: FlushGate,
        metrics: K2Metrics,
        consumer: Callable[[], Any],
        on_tables_recreated: Callable[[TableRecreated], Awaitable[None]],
        block_max: int,
    ) -> None:
        self.lifecycle = lifecycle
        self.ledger = ledger
        self.gate = gate
        self.metrics = metrics
        self._consumer = consumer
        self._on_tables_recreated = on_tables_recreated
        self.block_max = block_max
        self.processors: dict[str, IngressProcessor] = {}
        self._inflight: dict[asyncio.Task[None], IngressProcessor] = {}
        self.closed = False
        """Set at shutdown: nothing more is taken."""
        self.last_taken: dict[TP, float] = {}

    def takes(self, tp: TP, generation: int | None) -> bool:
        """Whether a batch of ``tp`` fetched in ``generation`` may be taken now."""
        return (
            not self.closed
            and self.lifecycle.is_consuming(tp)
            and (generation is None or generation == self.lifecycle.generation)
        )

    async def take(self, fetch: TopicFetch) -> None:
        """Process one topic's fetch (called by its agent); never raises but for cancellation."""
        task = asyncio.ensure_future(self._take(fetch))
        self._inflight[task] = self.processors[fetch.topic]
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            owned = set(self.ledger.owned())
            for batch in fetch.batches:
                if batch.tp in owned:  # one revoked and forgotten meanwhile is its next owner's
                    self.fail(batch.tp, task.exception())  # type: ignore[arg-type]

    def abandon(self) -> list[asyncio.Task[None]]:
        """Cancel the fetches that wrote nothing yet (resolving schemas, waiting for room); the others to wait for."""
        for task, proc in list(self._inflight.items()):
            if not proc.writing:
                task.cancel()
        return [t for t in self._inflight if not t.done()]

    async def _take(self, fetch: TopicFetch) -> None:
        for i, block in enumerate(fetch.blocks(self.block_max)):
            if i:
                await asyncio.sleep(0)  # timers, flushes and the other agents run between blocks
            await self._take_block(block)

    async def _take_block(self, fetch: TopicFetch) -> None:
        batches: list[FetchedBatch] = []
        for batch in fetch.batches:
            if not self.takes(batch.tp, batch.generation):
                continue
            if batch.records:
                batches.append(batch)
                continue
            # The position moved past records K2 does not read (transaction markers).
            admission = self.ledger.admit(batch.tp, batch.start, batch.end, (), batch.generation)
            if admission.verdict is Verdict.ACCEPT:
                self.ledger.track(batch.tp, batch.end, ())
            elif admission.verdict is Verdict.DISCONTINUITY:
                await self._discontinuity(batch.tp, batch.start, admission.expected)
        if not batches:
            return
        room = sum(len(b.records) for b in batches)
        await self.gate.reserve(room)
        buffered = False
        try:
            buffered = await self._take_reserved(batches, room)
        finally:
            if not buffered:
                self.gate.release(room)  # abandoned, stale or failed: the room goes back

    async def _take_reserved(self, batches: list[FetchedBatch], room: int) -> bool:
        """The batches, with their room reserved; True once some events are buffered (the room is theirs)."""
        await self.ledger.wait_capacity()
        proc = self.processors[batches[0].topic]
        parts = [Frames.of(b.partition, b.records) for b in batches]
        try:
            prepared = await proc.prepare(Frames.join(parts))
        except TableRecreated as exc:  # noticed while adding a writer schema's columns: as in a flush
            await self._on_tables_recreated(exc)
            return False
        # From the first admission to the writes nothing waits (see the module docstring).
        began = time.perf_counter()
        admitted: list[tuple[FetchedBatch, Frames]] = []
        refused: list[tuple[FetchedBatch, int | None]] = []
        for batch, frames in zip(batches, parts, strict=True):
            if not self.takes(batch.tp, batch.generation):
                continue
            admission = self.ledger.admit(batch.tp, batch.start, batch.end, batch.records, batch.generation)
            if admission.verdict is Verdict.DISCONTINUITY:
                refused.append((batch, admission.expected))
            elif admission.verdict is Verdict.ACCEPT and admission.records:
                if len(admission.records) != len(frames):  # a re-fetched head, already taken, was cut off
                    frames = Frames.of(batch.partition, admission.records)
                admitted.append((batch, frames))
        if admitted:
            written = await proc.write_many([frames for _, frames in admitted], prepared)
            now = time.monotonic()
            for (batch, _), writes in zip(admitted, written, strict=True):
                self.ledger.track(batch.tp, batch.end, writes.futures)
                self.last_taken[batch.tp] = now
            self.gate.added(sum(w.events for w in written), room)
            self.metrics.ingest_block_seconds.labels(proc.source.topic).observe(time.perf_counter() - began)
        for batch, expected in refused:
            await self._discontinuity(batch.tp, batch.start, expected)
        return bool(admitted)

    async def _discontinuity(self, tp: TP, start: int, expected: int | None) -> None:
        if not self.ledger.refused_once(tp):
            return
        self.metrics.ingest_discontinuities.labels(tp.topic).inc()
        log.error(
            "%s/%d: a batch starts at %d but %s was expected: records in between were never taken; seeking back",
            tp.topic,
            tp.partition,
            start,
            expected,
        )
        if expected is not None:
            try:
                await self._consumer().seek(tp, expected)
            except IllegalStateError:
                log.info("%s/%d not sought back: the consumer no longer holds it", tp.topic, tp.partition)

    def fail(self, tp: TP, exc: BaseException) -> None:
        """Fail closed: an error K2 did not classify as the event's fault stops the partition (traceback once)."""
        log.error(
            "%s/%d: an error K2 did not classify as the event's fault; nothing of this batch or after it "
            "is acknowledged",
            tp.topic,
            tp.partition,
            exc_info=exc,
        )
        self.ledger.stop(tp, f"{type(exc).__name__}: {exc}")

    def on_partition_stopped(self, tp: TP, reason: str) -> None:
        """The ledger stopped ``tp`` (a failed batch or a write the broker refused): pause it and say so."""
        with contextlib.suppress(Exception):  # the consumer may be stopping
            self._consumer().pause_partitions([tp])
        self.metrics.ingest_failures.labels(tp.topic).inc()
        self.publish_stopped()
        log.error(
            "%s/%d stopped (%s): its offsets stay at the last durable batch; it resumes from the committed offset "
            "when revoked, or when the worker restarts",
            tp.topic,
            tp.partition,
            reason,
        )

    def publish_stopped(self) -> None:
        stopped = self.ledger.stopped()
        for topic in self.processors:
            self.metrics.ingest_stopped.labels(topic).set(sum(1 for tp in stopped if tp.topic == topic))

    def forget_taken(self, tps: Mapping[TP, Any] | set[TP]) -> None:
        for tp in tps:
            self.last_taken.pop(tp, None)
