"""The one owner of a worker's pipeline: a faust Service with a start and a stop.

It builds and holds the parts, each of which owns one thing:

* :class:`~k2.pipeline.lifecycle.Lifecycle`: where each held partition is in its life
  (assigned, positioning, consuming, revoking), per consumer-group generation;
* :class:`~k2.pipeline.positioning.Positioner`: the one task that positions partitions and
  watches that every one consumes within its bound;
* :class:`~k2.pipeline.intake.Intake`: batches of consuming partitions become chunks;
* :class:`~k2.pipeline.ledger.Ledger`: what was taken, what is durable, what may be committed;
* :class:`~k2.pipeline.gate.FlushGate`: the buffer's bound and the flush requests;
* :class:`~k2.pipeline.sink.Sink`: the catalog, the flush loop and the lake's marks.

faust's consumer tells it about rebalances through :class:`~k2.kafka.consumer.BatchSink`
(:meth:`Pipeline.on_assign`, :meth:`Pipeline.on_revoke`, :meth:`Pipeline.on_seek`) and
asks it what to commit; faust's recovery tells it when a generation's tables are restored.

The commit order, in one place (each step waits for the one before):

1. a batch of a consuming partition is taken: its chunks, sequence state and rejects are
   handed to Kafka (``Intake``);
2. the broker acknowledges every write of the batch: the partition's durable frontier
   moves past it, in batch order (``Ledger``);
3. faust commits, for each held partition, that frontier (``commit_offset``): never past
   a record whose row or reject is not durable in Kafka;
4. a flush commits to Iceberg the chunks below the frontier, the offsets they cover
   recorded in the same snapshot (``Flusher``); rows at or below the marks a table already
   records are dropped, so a replay never lands twice;
5. only then are the chunks tombstoned. A crash anywhere leaves the next owner to start
   after the lake's marks and the restored chunks (``start_positions``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from faust.types import TP, AppT
from mode import Service

from k2.admin.growth import ChangelogGrowth
from k2.avro.registry import WriterSchema, WriterSchemaCache
from k2.buffer.chunks import REJECTS, ROWS
from k2.buffer.store import ChunkStore
from k2.catalog import catalog_configuration
from k2.errors import describe
from k2.ingest.processor import IngressProcessor, LakeSchemas, Source, Stage, evolve_for
from k2.kafka.batches import TopicFetch
from k2.kafka.metadata import producer_partitions
from k2.lake.records import RejectRecord
from k2.lake.writer import IcebergWriter
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.pipeline.gate import FlushGate
from k2.pipeline.intake import Intake
from k2.pipeline.ledger import Ledger
from k2.pipeline.lifecycle import Lifecycle, PartitionState, Phase
from k2.pipeline.positioning import ConsumerPort, Positioner, Starts
from k2.pipeline.sink import Sink
from k2.settings import Settings
from k2.sink.flusher import SHARED_TABLES, Flusher, FlushReport, SourceBuffer

__all__ = ["Pipeline", "Wiring"]

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
    table_topics: Mapping[str, Sequence[str]]
    """Per source topic, the changelog topics co-partitioned with it (its buffer and state tables)."""


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
        self._table_topics = {topic: tuple(names) for topic, names in wiring.table_topics.items()}
        self._batch_topics = frozenset(self.sources)
        self.lifecycle = Lifecycle()
        self.gate = FlushGate(settings.flush_max_rows)
        self.ledger = Ledger(on_stop=lambda tp, why: self.intake.on_partition_stopped(tp, why))
        lake_ready = asyncio.Event()
        self.positioner = Positioner(
            self.lifecycle,
            lambda: cast(ConsumerPort, self.app.consumer),
            lambda: self.sink.read_marks(),
            lake_ready,
            lambda: self.sink.error,
            self.stores,
            self._tables_ready,
            metrics,
            timeout_s=settings.catalog_timeout_s,
            position_bound_s=settings.position_timeout_s,
            stuck_exit_s=settings.stuck_exit_s,
            restoring=lambda: bool(getattr(self.app, "in_recovery", False)),
        )
        self.sink = Sink(
            settings,
            metrics,
            worker_id,
            self.lifecycle,
            self.ledger,
            self.gate,
            self.positioner,
            lake_ready,
            lambda writer: Flusher(
                [SourceBuffer(s.topic, s.tables, self.stores[s.topic]) for s in wiring.sources], writer, metrics
            ),
        )
        self.positioner.on_positioned = self._positioned
        self.positioner.on_regressed = lambda exc, tps: self.sink.lake_went_back(exc, self.lifecycle.held())
        self.intake = Intake(
            self.lifecycle,
            self.ledger,
            self.gate,
            metrics,
            lambda: self.app.consumer,
            self.sink.tables_recreated,
            settings.ingest_block_max,
        )
        self.lake = LakeSchemas(
            lambda: self.sink.writer().state, lambda table: self.sink.writer().arrow_schema(table), self._evolve
        )
        self._registry: WriterSchemaCache | None = None
        self.positioned_at: float | None = None
        self._warned_embedded = False
        self._growth = ChangelogGrowth(settings, self._table_topics)
        self._growth_error: str | None = None
        metrics.init_labels(
            list(self.sources), [*(t for s in wiring.sources for t in s.tables), *SHARED_TABLES.values()]
        )

    # -- lifecycle of the service --------------------------------------------------------------

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
            self.intake.processors[topic] = IngressProcessor(
                source,
                self.stores[topic],
                self._registry,
                self.lake,
                self._send_reject,
                self.metrics,
                self.worker_id,
                stages=self._stages.get(topic, ()),
            )

    async def on_stop(self) -> None:
        if self._registry is not None:
            await self._registry.aclose()

    @Service.task
    async def _load_lake(self) -> None:
        """The catalog, loaded once (an unavailable catalog is waited out; a bad configuration crashes the worker)."""
        await self.sink.load()

    @Service.task
    async def _positioning(self) -> None:
        """The one positioning task (a :class:`~k2.pipeline.positioning.PartitionsStuck` ends the worker)."""
        await self.positioner.run(lambda: self.should_stop)

    @Service.task
    async def _sink(self) -> None:
        await self.sink.run(lambda: self.should_stop)

    @Service.task
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

    async def drain(self) -> FlushReport | None:
        """At shutdown, before faust's consumer stops: take nothing more, let batches in flight become
        durable, and flush what is buffered, within ``K2_SHUTDOWN_TIMEOUT_S``.

        What does not make it in time stays in the changelogs (the next owner lands it): a slow
        shutdown loses nothing, it only leaves more to the next worker.
        """
        self.intake.closed = True
        self.sink.paused = True
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        pending = self.intake.abandon()
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
        await self.ledger.wait_durable(self.ledger.owned(), max(0.1, deadline - time.monotonic()))
        if not self.sink.ready.is_set() or not self.lifecycle.consuming_set():
            return None
        try:
            report = await asyncio.wait_for(self.sink.flush(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("shutdown: the final flush did not finish in time; the next owner lands the rest")
            return None
        log.info("shutdown: flushed %d row(s) before stopping", report.rows_written)
        return report

    @property
    def registry(self) -> WriterSchemaCache:
        if self._registry is None:
            raise RuntimeError("the pipeline has not started")
        return self._registry

    def writer(self) -> IcebergWriter:
        return self.sink.writer()

    def _evolve(self, table_name: str, writer_schema: WriterSchema) -> bool:
        writer = self.sink.writer()
        fields = evolve_for(writer_schema, writer.table(table_name).schema())
        return bool(fields) and writer.ensure_columns(table_name, fields)

    # -- what faust's consumer says and asks (k2.kafka.consumer.BatchSink) -------------------------

    @property
    def batch_topics(self) -> frozenset[str]:
        return self._batch_topics

    def commit_offset(self, tp: TP) -> int | None:
        state = self.lifecycle.state(tp)
        if state is None or state.phase not in (Phase.CONSUMING, Phase.REVOKING):
            return None
        return self.ledger.frontier(tp)

    def committable(self) -> Iterable[TP]:
        return [tp for tp in self.ledger.owned() if self.commit_offset(tp) is not None]

    def on_assign(self, tps: set[TP], generation: int) -> None:
        """faust assigned ``tps`` in ``generation``: they wait (paused) for their tables to be restored."""
        before = self.lifecycle.held()
        self.lifecycle.assigned(tps, generation)
        self.ledger.forget(before | tps)
        self.intake.forget_taken(before - tps)
        self.intake.publish_stopped()
        self._drop_unowned(tps)
        self.sink.paused = self.intake.closed
        self.positioner.cancel()
        self._say_if_embedded_catalog_is_shared()

    async def on_revoke(self, tps: set[TP]) -> None:
        """Before faust revokes: take no new batch, finish or abandon the ones in flight, let them become durable."""
        held = self.lifecycle.revoking(tps)
        self.sink.paused = True
        self.positioner.cancel()
        pending = self.intake.abandon()
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_timeout_s)
        if not await self.ledger.wait_durable(held, self.settings.revoke_timeout_s):
            log.warning(
                "revocation: batches of %d partition(s) not durable after %.0fs",
                len(held),
                self.settings.revoke_timeout_s,
            )
        await self.sink.wait_flushing(self.settings.catalog_timeout_s * 3)

    async def on_seek(self, positions: Mapping[TP, int | None], generation: int) -> None:
        """faust sought its assignment to the committed offsets: decide where each partition really starts.

        The partitions are paused until then (deciding needs the lake's marks, so the catalog);
        nothing of them is taken, committed or flushed meanwhile.
        """
        if generation != self.lifecycle.generation:
            log.debug("seek of generation %d ignored (current: %s)", generation, self.lifecycle.generation)
            return
        again = self.lifecycle.sought(positions)
        if again:
            self.ledger.forget(again)
            self.positioner.pause(again)
            self.positioner.cancel()

    def _on_rebalance_complete(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """faust restored its tables (it seeks right after this signal, if no newer rebalance began).

        The signal names no generation: it counts for the lifecycle's generation only when no
        newer assignment is on its way (the app's generation moves before K2 hears of the
        assignment) and faust has not been asked to recover again.
        """
        recovery = cast(Any, self.app.tables).recovery
        if self.app.consumer_generation_id != self.lifecycle.generation or recovery.signal_recovery_start.is_set():
            log.debug("table recovery completed for a generation already replaced")
            return
        self.lifecycle.restored(self.lifecycle.generation)
        self.positioner.wake()

    def _positioned(self, starts: Starts, done: set[TP]) -> None:
        """An attempt positioned ``done``: the ledger starts there, the buffer counts their rows."""
        self.ledger.generation = self.lifecycle.generation
        self.ledger.reset({tp: starts.starts.get(tp) for tp in done})
        now = time.monotonic()
        for tp in done:
            state = self.lifecycle.state(tp)
            if state is not None:
                self.metrics.assignment_to_consuming.observe(state.since - state.assigned_at)
        self.gate.recount(self._owned_rows())
        self.gate.request("positioned")
        self.positioned_at = now

    async def _tables_ready(self, tps: set[TP]) -> set[TP]:
        """Those of ``tps`` whose co-partitioned changelog partitions this worker holds and can write to.

        After a source topic grew, the group can assign a source partition without its changelog
        partitions (until those grow too), and the producer can lag behind the new partitions.
        """
        actives = self.app.assignor.assigned_actives()
        ready = {
            tp
            for tp in tps
            if all(TP(topic, tp.partition) in actives for topic in self._table_topics.get(tp.topic, ()))
        }
        for topic in {t for tp in ready for t in self._table_topics.get(tp.topic, ())}:
            wanted = {tp.partition for tp in ready if topic in self._table_topics.get(tp.topic, ())}
            known = await producer_partitions(self.app.producer, topic)
            if not wanted <= known:
                known = await producer_partitions(self.app.producer, topic, refresh=True)
            ready -= {tp for tp in ready if topic in self._table_topics.get(tp.topic, ()) and tp.partition not in known}
        return ready

    async def grow_changelogs(self) -> None:
        """Grow changelog topics whose source topic gained partitions (see :mod:`k2.admin.growth`)."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._growth.check), self.settings.catalog_timeout_s * 2)
        except Exception as exc:
            what = describe(exc)
            if what != self._growth_error:
                log.warning("cannot check or grow the changelog topics' partitions: %s", what)
            self._growth_error = what
        else:
            self._growth_error = None

    def _say_if_embedded_catalog_is_shared(self) -> None:
        """Once: several workers on the embedded (SQLite) catalog share one write lock (see README, Scale-out)."""
        if self._warned_embedded or catalog_configuration(self.settings):
            return
        hosts = getattr(self.app.assignor, "changelog_distribution", None) or {}
        if len(hosts) > 1:
            self._warned_embedded = True
            log.warning(
                "%d workers share the embedded SQLite catalog: its file is locked for every commit, so one slow or "
                "frozen worker stops the others' positioning and commits. Scale out with a REST catalog "
                "(README, Scale-out).",
                len(hosts),
            )

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

    # -- batches ---------------------------------------------------------------------------------

    async def take(self, fetch: TopicFetch) -> None:
        """Process one topic's fetch (called by its agent); never raises but for cancellation."""
        await self.intake.take(fetch)

    async def _send_reject(self, record: RejectRecord, reject: Reject) -> asyncio.Future[Any]:
        headers = [*record.headers, *reject.headers()]  # the record's own, then why it was refused
        fut = await self._rejects_topic.send(key=record.key, value=record.value, headers=headers, force=True)
        return asyncio.ensure_future(fut)

    # -- for timers, views and readiness ------------------------------------------------------------

    @property
    def table_topics(self) -> dict[str, tuple[str, ...]]:
        """Per source topic, the changelog topics co-partitioned with it."""
        return dict(self._table_topics)

    @property
    def lake_ready(self) -> asyncio.Event:
        return self.sink.ready

    @property
    def lake_error(self) -> str | None:
        return self.sink.error

    @property
    def lake_marks(self) -> dict[tuple[str, int], int]:
        return self.sink.marks

    @property
    def flusher(self) -> Flusher:
        return self.sink.flusher

    @property
    def last_taken(self) -> dict[TP, float]:
        return self.intake.last_taken

    @property
    def last_flush(self) -> FlushReport | None:
        return self.sink.last_flush

    def request_lake_check(self) -> None:
        self.sink.request_lake_check()

    async def maintain(self) -> None:
        await self.sink.maintain()

    async def expire_snapshots(self) -> None:
        await self.sink.maintain(expire_only=True)

    def publish_buffered_rows(self) -> dict[str, int]:
        by_topic: dict[str, set[int]] = {}
        for tp in self.ledger.owned():
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        return self.flusher.publish_buffered_rows(by_topic)

    def owned(self) -> list[TP]:
        """Partitions this worker consumes (lag and progress are reported for these)."""
        return sorted(self.lifecycle.consuming_set(), key=lambda tp: (tp.topic, tp.partition))

    def held(self) -> dict[TP, PartitionState]:
        """Every partition this worker holds, in any phase."""
        return {tp: s for tp in self.lifecycle.held() if (s := self.lifecycle.state(tp)) is not None}

    def stopped(self) -> dict[TP, str]:
        return self.ledger.stopped()

    def not_consuming(self) -> dict[TP, PartitionState]:
        return self.lifecycle.not_consuming()

    def overdue(self) -> dict[TP, str]:
        return dict(self.positioner.overdue)
