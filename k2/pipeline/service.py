"""The one owner of a worker's pipeline state: a faust Service with a start and a stop.

It holds the sources and their processors, the chunk buffers, the ledger of positions,
the flush gate and the Iceberg sink; the catalog is loaded in :meth:`Pipeline.on_start`
(in a thread, with a deadline) and the registry client closed in :meth:`Pipeline.on_stop`.
The ingest agents only hand it batches (:meth:`Pipeline.take`); faust's consumer asks it
what to commit (:class:`~k2.kafka.consumer.BatchSink`); the views and readiness ask it
how things stand.

Failure policy (fail closed): an error that classification did not turn into a reject
stops the partition it happened on (:meth:`~k2.pipeline.ledger.Ledger.stop`): nothing of
that batch or after it is acknowledged or flushed, the partition is paused, and the log,
``k2_ingest_stopped_partitions`` and ``/k2/ready`` say why, until the partition is
revoked (its next owner, or this worker after a restart, starts again from the committed
offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from faust.types import TP, AppT
from mode import Service

from k2.avro.registry import WriterSchema, WriterSchemaCache
from k2.buffer.chunks import REJECTS, ROWS
from k2.buffer.store import ChunkStore
from k2.catalog import catalog_configuration, load_k2_catalog
from k2.ingest.frames import Frames
from k2.ingest.processor import IngressProcessor, LakeSchemas, Source, Stage, evolve_for
from k2.kafka.batches import FetchedBatch
from k2.lake.maintain import MaintainPolicy, maintain_table
from k2.lake.records import RejectRecord
from k2.lake.schemas import TABLES
from k2.lake.status import TableStatus, table_status
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter, LakeRegressed, TableRecreated
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.pipeline.gate import FlushGate
from k2.pipeline.ledger import Ledger, Verdict
from k2.pipeline.positions import start_positions
from k2.settings import Settings
from k2.sink.flusher import SHARED_TABLES, Flusher, FlushReport, SourceBuffer

__all__ = ["Pipeline"]

#: Chunk kinds whose rows are events (what backpressure counts); gap rows are derived from them.
EVENT_KINDS = frozenset({ROWS, REJECTS})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wiring:
    """What the pipeline is built from (faust objects declared by :func:`k2.app.create_app`)."""

    sources: Sequence[Source]
    stores: Mapping[str, ChunkStore]
    stages: Mapping[str, Sequence[Stage]]
    rejects_topic: Any
    """The faust topic rejected records are copied to (original key and value, reasons in headers)."""


class Pipeline(Service):
    """Everything per process besides faust itself; see the module docstring."""

    def __init__(self, app: AppT, settings: Settings, metrics: K2Metrics, wiring: Wiring, worker_id: str) -> None:
        super().__init__()
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.worker_id = worker_id
        self.sources = {s.topic: s for s in wiring.sources}
        self.stores = dict(wiring.stores)
        self._stages = {topic: tuple(stages) for topic, stages in wiring.stages.items()}
        self._rejects_topic = wiring.rejects_topic
        self.ledger = Ledger(on_stop=self._on_partition_stopped)
        self.gate = FlushGate(settings.flush_max_rows)
        self.flusher = Flusher(
            [SourceBuffer(s.topic, s.tables, self.stores[s.topic]) for s in wiring.sources], self.writer, metrics
        )
        self.lake = LakeSchemas(lambda table: self.writer().arrow_schema(table), self._evolve)
        self._writer: IcebergWriter | None = None
        self._registry: WriterSchemaCache | None = None
        self._processors: dict[str, IngressProcessor] = {}
        self._batch_topics = frozenset(self.sources)
        self.lake_ready = asyncio.Event()
        self.lake_error: str | None = None
        """Why the catalog is not loaded (None once it is)."""
        self.lake_marks: dict[tuple[str, int], int] = {}
        """The last offset landed per source partition (read at positioning, moved by every commit)."""
        self._revoking = False
        self._unpositioned: set[TP] = set()
        self._committed: dict[TP, int | None] = {}
        self._positioning: asyncio.Task[None] | None = None
        self._restored_generation: int | None = None
        """The consumer generation whose table recovery faust has completed (``app.on_rebalance_complete``)."""
        self._floors: dict[TP, int] = {}
        self._lake_check: asyncio.Future[None] | None = None
        """Where partitions whose lake went back (:class:`LakeRegressed`) start, at the latest, when next positioned."""
        self._inflight: dict[asyncio.Task[None], IngressProcessor] = {}
        self._flushing: asyncio.Task[FlushReport] | None = None
        self.last_taken: dict[TP, float] = {}
        self.positioned_at: float | None = None
        self.last_flush: FlushReport | None = None
        metrics.init_labels(
            list(self.sources), [*(t for s in wiring.sources for t in s.tables), *SHARED_TABLES.values()]
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        # What this worker runs with, for whoever reads its log (secrets masked: k2.secrets redacts every record).
        log.info("settings: %s", self.settings)
        log.info(
            "Iceberg catalog %r: %s", self.settings.catalog_name, catalog_configuration(self.settings) or "embedded"
        )
        # mode's handler type names the signal argument by a protocol mypy cannot match a method to
        self.app.on_rebalance_complete.connect(cast(Any, self._on_rebalance_complete))
        self._registry = WriterSchemaCache.from_settings(self.settings)
        for topic, source in self.sources.items():
            self._processors[topic] = IngressProcessor(
                source,
                self.stores[topic],
                self._registry,
                self.lake,
                self._send_reject,
                self.metrics,
                self.worker_id,
                stages=self._stages.get(topic, ()),
            )
        self.add_future(self._load_lake())
        self.add_future(self._watch_registry())

    async def on_stop(self) -> None:
        if self._registry is not None:
            await self._registry.aclose()

    async def drain(self) -> FlushReport | None:
        """At shutdown, before faust's consumer stops: take nothing more, let batches in flight become
        durable, and flush what is buffered, within ``K2_SHUTDOWN_TIMEOUT_S``.

        What does not make it in time stays in the changelogs (the next owner lands it): a slow
        shutdown loses nothing, it only leaves more to the next worker.
        """
        self._revoking = True
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        pending = [t for t in self._inflight if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
        await self.ledger.wait_durable(self.ledger.owned(), max(0.1, deadline - time.monotonic()))
        if not self.lake_ready.is_set() or self._unpositioned:
            return None
        try:
            report = await asyncio.wait_for(self._flush(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("shutdown: the final flush did not finish in time; the next owner lands the rest")
            return None
        log.info("shutdown: flushed %d row(s) before stopping", report.rows_written)
        return report

    async def _load_lake(self) -> None:
        """Load the catalog and make sure every table exists, retrying until it works (logged once per cause)."""
        delay = 1.0
        while not self.should_stop:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.writer), self.settings.catalog_timeout_s * 3)
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if what != self.lake_error:
                    log.error("the Iceberg catalog is not usable yet, retrying every few seconds: %s", what)
                self.lake_error = what
                await self.sleep(delay)
                delay = min(delay * 2, 15.0)
                continue
            self.lake_error = None
            self.lake_ready.set()
            log.info("Iceberg catalog loaded, tables present")
            try:  # the commit age after a restart is that of the lake's newest snapshot, not unknown
                statuses = await asyncio.wait_for(
                    asyncio.to_thread(table_status, self.writer().catalog), self.settings.catalog_timeout_s * 2
                )
                record_commit_times(self.metrics, statuses)
            except Exception as exc:
                log.warning("could not read the tables' last commit times: %s: %s", type(exc).__name__, exc)
            return

    async def _watch_registry(self) -> None:
        """Say at once, and once, when the registry does not answer (events wait for it, nothing is rejected)."""
        down: str | None = None
        while not self.should_stop:
            try:
                await asyncio.wait_for(self.registry.ping(), self.settings.catalog_timeout_s)
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if down is None:
                    log.error(
                        "the schema registry at %s does not answer (%s): events wait until it does, none is "
                        "rejected for it; check K2_SCHEMA_REGISTRY_URL",
                        self.settings.schema_registry_url,
                        what,
                    )
                down = what
            else:
                if down is not None:
                    log.info("the schema registry answers again")
                down = None
            await self.sleep(5.0 if down is not None else 30.0)

    def writer(self) -> IcebergWriter:
        """The Iceberg writer; the first call loads the catalog and creates missing tables (blocking)."""
        if self._writer is None:
            catalog = load_k2_catalog(self.settings)
            ensure_tables(catalog)
            writer = IcebergWriter.for_settings(catalog, self.settings)
            writer.worker_id = self.worker_id
            self._writer = writer
        return self._writer

    @property
    def registry(self) -> WriterSchemaCache:
        if self._registry is None:
            raise RuntimeError("the pipeline has not started")
        return self._registry

    def _evolve(self, table_name: str, writer_schema: WriterSchema) -> bool:
        writer = self.writer()
        fields = evolve_for(writer_schema, writer.table(table_name).schema())
        return bool(fields) and writer.ensure_columns(table_name, fields)

    # -- what faust's consumer asks (k2.kafka.consumer.BatchSink) ---------------------------

    @property
    def batch_topics(self) -> frozenset[str]:
        return self._batch_topics

    def commit_offset(self, tp: TP) -> int | None:
        if tp in self._unpositioned:
            return None
        return self.ledger.frontier(tp)

    def committable(self) -> Iterable[TP]:
        return [tp for tp in self.ledger.owned() if tp not in self._unpositioned]

    async def on_revoke(self, tps: set[TP]) -> None:
        """Before faust revokes: take no new batch, finish or abandon the ones in flight, let them become durable."""
        self._revoking = True
        if self._positioning is not None:
            self._positioning.cancel()
        for task, proc in list(self._inflight.items()):
            if not proc.writing:
                task.cancel()  # still resolving schemas or waiting for room: nothing written yet
        pending = [t for t in self._inflight if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_timeout_s)
        if not await self.ledger.wait_durable(tps, self.settings.revoke_timeout_s):
            log.warning(
                "revocation: batches of %d partition(s) not durable after %.0fs",
                len(tps),
                self.settings.revoke_timeout_s,
            )
        if self._flushing is not None and not self._flushing.done():
            await asyncio.wait([self._flushing], timeout=self.settings.catalog_timeout_s * 3)

    async def on_seek(self, positions: Mapping[TP, int | None]) -> None:
        """faust positioned the consumer at the committed offsets: decide where each partition really starts.

        Until that is decided (it needs the lake's marks, so the catalog), the partitions
        are paused and nothing of them is taken, committed or flushed.
        """
        positions = {TP(tp.topic, tp.partition): off for tp, off in positions.items()}  # aiokafka's tuples too
        owned = set(positions)
        self.ledger.generation = self.app.consumer_generation_id
        self.ledger.forget(self.ledger.owned())
        self.publish_stopped()
        self._drop_unowned(owned)
        self._committed = dict(positions)
        self._unpositioned = set(owned)
        self._revoking = False
        if self._positioning is not None:
            self._positioning.cancel()
            self._positioning = None
        if owned:
            self.app.consumer.pause_partitions(owned)
            if self._restored_generation != self.ledger.generation:
                # faust is still restoring this assignment's tables (chunks, sequence state): positions
                # read now would miss restored chunks, and batches taken now would race the restore,
                # which overwrites their state with older values. faust seeks again once its tables are
                # restored (on_rebalance_complete, then perform_seek); that call positions.
                log.debug("positioning %d partition(s) after table recovery", len(owned))
                return
            self._positioning = asyncio.ensure_future(self._position(owned))

    def _on_rebalance_complete(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """faust's tables are restored for the current generation (it seeks right after this signal)."""
        self._restored_generation = self.app.consumer_generation_id

    async def _position(self, tps: set[TP]) -> None:
        """Start each partition after everything already settled (:mod:`k2.pipeline.positions`).

        Retries until the lake answers; the partitions stay paused meanwhile.
        """
        await self.lake_ready.wait()
        delay = 1.0
        while True:
            try:
                try:
                    marks = await asyncio.wait_for(
                        asyncio.to_thread(self.writer().lake_marks), self.settings.catalog_timeout_s * 2
                    )
                except LakeRegressed as exc:
                    self._lake_went_back(exc, tps)
                    marks = exc.marks
                log_starts = await asyncio.wait_for(
                    self.app.consumer.earliest_offsets(*tps), self.settings.catalog_timeout_s
                )
                break
            except Exception as exc:
                log.warning("positioning: cannot read the lake's marks yet, retrying: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        self.lake_marks = dict(marks)
        floors = {tp: self._floors.pop(tp) for tp in tps if tp in self._floors}
        plan = start_positions(
            {tp: self._committed.get(tp) for tp in tps},
            {tp: marks.get((tp.topic, tp.partition)) for tp in tps},
            {tp: self.stores[tp.topic].chunk_keys({tp.partition}) for tp in tps if tp.topic in self.stores},
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
        for topic, store in self.stores.items():
            untrusted = [key for tp in tps if tp.topic == topic for key in plan.discard.get(tp, ())]
            if untrusted:
                log.info(
                    "%s: %d restored chunk(s) at or after the start dropped (rebuilt from Kafka)", topic, len(untrusted)
                )
                await store.remove(untrusted)
        starts: dict[TP, int | None] = {}
        for tp in tps:
            start = plan.starts.get(tp)
            starts[tp] = start
            if start is not None and start != self._committed.get(tp):
                log.info(
                    "%s/%d starts at %d (group committed %s, lake mark %s)",
                    tp.topic,
                    tp.partition,
                    start,
                    self._committed.get(tp),
                    marks.get((tp.topic, tp.partition)),
                )
            if start is not None:
                await self.app.consumer.seek(tp, start)
        self.ledger.reset(starts)
        self._unpositioned -= tps
        self.app.consumer.resume_partitions(tps)
        self.gate.recount(self._owned_rows())
        self.gate.request("positioned")
        self.positioned_at = time.monotonic()
        self._positioning = None

    def _drop_unowned(self, owned: set[TP]) -> None:
        for topic, store in self.stores.items():
            keep = {tp.partition for tp in owned if tp.topic == topic}
            held = {key.partition for key in store.iter_keys()}
            if held - keep:
                store.drop_local(held - keep)

    def _owned_rows(self) -> int:
        by_topic: dict[str, set[int]] = {}
        for tp in self.ledger.owned():
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        return sum(self.stores[t].buffered_rows(p, EVENT_KINDS) for t, p in by_topic.items() if t in self.stores)

    # -- batches --------------------------------------------------------------------------

    async def take(self, batch: FetchedBatch) -> None:
        """Process one fetched batch (called by its topic's agent); never raises but for cancellation."""
        task = asyncio.ensure_future(self._take(batch))
        self._inflight[task] = self._processors[batch.topic]
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self._fail(batch.tp, task.exception())  # type: ignore[arg-type]

    async def _take(self, batch: FetchedBatch) -> None:
        tp = batch.tp
        if self._revoking or tp in self._unpositioned or not batch.records:
            return
        room = len(batch.records)
        await self.gate.reserve(room)
        buffered = False
        try:
            buffered = await self._take_reserved(batch, room)
        finally:
            if not buffered:
                self.gate.release(room)  # abandoned, stale or failed: the room goes back

    async def _take_reserved(self, batch: FetchedBatch, room: int) -> bool:
        """The batch, with its room reserved; True once its events are buffered (the room is theirs)."""
        tp = batch.tp
        await self.ledger.wait_capacity()
        proc = self._processors[tp.topic]
        frames = Frames.of(tp.partition, batch.records)
        try:
            prepared = await proc.prepare(frames)
        except TableRecreated as exc:  # noticed while adding a writer schema's columns: as in a flush
            await self._tables_recreated(exc)
            return False
        if self._revoking or tp in self._unpositioned:
            return False
        admission = self.ledger.admit(tp, batch.start, batch.end, batch.records, batch.generation)
        if admission.verdict is Verdict.DISCONTINUITY:
            if self.ledger.refused_once(tp):
                self.metrics.ingest_discontinuities.labels(tp.topic).inc()
                log.error(
                    "%s/%d: a batch starts at %d but %d was expected: records in between were never taken; "
                    "seeking back to %d",
                    tp.topic,
                    tp.partition,
                    batch.start,
                    admission.expected,
                    admission.expected,
                )
                if admission.expected is not None:
                    await self.app.consumer.seek(tp, admission.expected)
            return False
        if admission.verdict is not Verdict.ACCEPT or not admission.records:
            return False
        if len(admission.records) != len(frames):  # a re-fetched head, already taken, was cut off
            frames = Frames.of(tp.partition, admission.records)
        writes = await proc.write(frames, prepared)
        self.ledger.track(tp, batch.end, writes.futures)
        self.gate.added(writes.events, room)
        self.last_taken[tp] = time.monotonic()
        return True

    def _fail(self, tp: TP, exc: BaseException) -> None:
        """Fail closed: an error K2 did not classify as the event's fault stops the partition (traceback once)."""
        log.error(
            "%s/%d: an error K2 did not classify as the event's fault; nothing of this batch or after it "
            "is acknowledged",
            tp.topic,
            tp.partition,
            exc_info=exc,
        )
        self.ledger.stop(tp, f"{type(exc).__name__}: {exc}")

    def _on_partition_stopped(self, tp: TP, reason: str) -> None:
        """The ledger stopped ``tp`` (a failed batch or a write the broker refused): pause it and say so."""
        with contextlib.suppress(Exception):  # the consumer may be stopping
            self.app.consumer.pause_partitions([tp])
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
        for topic in self.sources:
            self.metrics.ingest_stopped.labels(topic).set(sum(1 for tp in stopped if tp.topic == topic))

    async def _send_reject(self, record: RejectRecord, reject: Reject) -> asyncio.Future[Any]:
        headers = [*record.headers, *reject.headers()]  # the record's own, then why it was refused
        fut = await self._rejects_topic.send(key=record.key, value=record.value, headers=headers, force=True)
        return asyncio.ensure_future(fut)

    # -- the sink ----------------------------------------------------------------------------

    @Service.task
    async def _sink(self) -> None:
        """The Iceberg sink: one flush at a time, whenever the gate has a request."""
        while not self.should_stop:
            reason = await self.gate.next_request()
            if self._revoking or not self.lake_ready.is_set():
                continue  # the timer asks again
            self._flushing = asyncio.ensure_future(self._flush())
            try:
                await asyncio.shield(self._flushing)
            except Exception:
                log.exception("flush (%s) failed", reason)

    async def _flush(self) -> FlushReport:
        frontiers = {(tp.topic, tp.partition): f for tp, f in self.ledger.frontiers().items()}
        try:
            report = await self.flusher.flush(frontiers)
        except TableRecreated as exc:
            await self._tables_recreated(exc)
            return FlushReport()
        except LakeRegressed as exc:
            self._lake_went_back(exc, set(self.ledger.owned()))
            await self.reposition()
            return FlushReport()
        for result in report.results:
            for tp, off in result.offsets.items():
                if off > self.lake_marks.get(tp, -1):
                    self.lake_marks[tp] = off
        if report.results:
            log.info(
                "flush: %s",
                ", ".join(f"{r.table_name} +{r.rows_written} ({r.duration_s:.2f}s)" for r in report.results),
            )
        self.gate.removed(report.rows_forgotten)
        self.last_flush = report
        return report

    async def _tables_recreated(self, exc: TableRecreated) -> None:
        """A table was dropped and created again: load every table afresh and position every partition again."""
        log.error("%s; positioning every partition again from what the lake records now", exc)
        self.writer().forget_tables()
        self.lake.forget()
        await self.reposition()

    async def reposition(self) -> None:
        """Position every owned partition again (after the lake lost its history under the worker)."""
        owned = set(self.ledger.owned())
        positions = {tp: self.ledger.frontier(tp) for tp in owned}
        await self.on_seek(positions)

    def _lake_went_back(self, exc: LakeRegressed, owned: set[TP]) -> None:
        """A table records less than it did: land ``owned`` partitions again from there (see :class:`LakeRegressed`)."""
        starts = {TP(t, p): start for (t, p), start in exc.starts.items() if TP(t, p) in owned}
        for table in exc.behind:
            self.metrics.lake_regressions.labels(table).inc()
        for tp, start in starts.items():
            self._floors[tp] = min(start, self._floors.get(tp, start))
        log.error(
            "%s; landing %d owned partition(s) again from Kafka from there%s",
            exc,
            len(starts),
            "" if starts else " (none of them is this worker's)",
        )
        for (topic, partition), mark in exc.marks.items():
            if mark < self.lake_marks.get((topic, partition), -1):
                self.lake_marks[(topic, partition)] = mark

    def request_lake_check(self) -> None:
        """Start :meth:`check_lake` in the background, unless one is still running (a commit may hold a table)."""
        if self._lake_check is None or self._lake_check.done():
            self._lake_check = asyncio.ensure_future(self.check_lake())

    async def check_lake(self) -> None:
        """Read the lake's marks (the lag views show them) and notice a table that went back while idle.

        A flush notices it too, before it commits; this finds it when there is nothing to flush.
        """
        if not self.lake_ready.is_set() or self._revoking or self._unpositioned or self._positioning is not None:
            return
        try:
            marks = await asyncio.wait_for(
                asyncio.to_thread(self.writer().lake_marks), self.settings.catalog_timeout_s * 2
            )
        except LakeRegressed as exc:
            self._lake_went_back(exc, set(self.ledger.owned()))
            if any(TP(t, p) in self._floors for t, p in exc.starts):
                await self.reposition()
            return
        except Exception as exc:  # the catalog is down: the flush and readiness say so
            log.debug("lake check: %s: %s", type(exc).__name__, exc)
            return
        for tp, mark in marks.items():
            if mark > self.lake_marks.get(tp, -1):
                self.lake_marks[tp] = mark

    async def maintain(self) -> None:
        """Compact, expire and remove orphans in every table (``K2_MAINTAIN_*``; see :mod:`k2.lake.maintain`).

        Concurrent commits of this worker's flush and of other workers make a compaction
        conflict and plan again; they are never dropped.
        """
        if not self.lake_ready.is_set():
            return
        catalog = self.writer().catalog
        policy = MaintainPolicy.from_settings(self.settings)
        for table_def in TABLES.values():
            try:
                result = await asyncio.to_thread(maintain_table, catalog, table_def, policy)
            except Exception as exc:  # the next round tries again; the flush does not depend on it
                log.warning("maintenance of %s failed: %s: %s", table_def.name, type(exc).__name__, exc)
                continue
            if result.compacted or result.expired or result.orphans or result.notes:
                log.info(
                    "maintenance of %s: compacted %d day(s), expired %d snapshot(s), deleted %d orphan file(s)%s",
                    table_def.name,
                    len(result.compacted),
                    result.expired,
                    result.orphans,
                    "".join(f"; {note}" for note in result.notes),
                )

    def publish_buffered_rows(self) -> dict[str, int]:
        by_topic: dict[str, set[int]] = {}
        for tp in self.ledger.owned():
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        return self.flusher.publish_buffered_rows(by_topic)

    # -- for views and readiness --------------------------------------------------------------

    def owned(self) -> list[TP]:
        return sorted(self.ledger.owned(), key=lambda tp: (tp.topic, tp.partition))

    def stopped(self) -> dict[TP, str]:
        return self.ledger.stopped()

    def unpositioned(self) -> set[TP]:
        return set(self._unpositioned)


def record_commit_times(metrics: K2Metrics, statuses: Iterable[TableStatus]) -> None:
    """Seed the last-commit time of each table from its newest snapshot (times only move forward)."""
    for st in statuses:
        if st.committed_at_ms is not None:
            metrics.record_commit(st.name, st.committed_at_ms / 1000)
