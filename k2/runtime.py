"""What a worker process holds besides Faust itself: registry cache, Iceberg writer,
per-topic processors and the flusher, wired from the settings.

Nothing here does I/O when built; the catalog is loaded (and missing tables created) on
first use, in a worker thread, so importing the app stays free of side effects.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from k2.avro.registry import WriterSchema, WriterSchemaCache
from k2.avro.schemas import subject_for_topic
from k2.buffer.store import ChunkStore
from k2.catalog import load_k2_catalog
from k2.ingest.classify import RawRecord
from k2.ingest.processor import IngressProcessor, LakeSchemas, Source, Stage, evolve_for
from k2.lake.records import RejectRecord
from k2.lake.schemas import COMPANIES, QUOTES, REJECTS, TRADES
from k2.lake.status import TableStatus, table_status
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter, default_worker_id
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.observe.lag import merge_marks
from k2.settings import Settings
from k2.sink.flusher import Flusher, FlushReport, SourceBuffer
from k2.validation import validate_quote, validate_reference, validate_trade

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

SendReject = Callable[[RejectRecord, Reject], Awaitable[Any]]


class Runtime:
    """The per-process state of a K2 worker."""

    def __init__(
        self,
        settings: Settings,
        stores: Mapping[str, ChunkStore],
        send_reject: SendReject,
        metrics: K2Metrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.worker_id = settings.worker_id or default_worker_id()
        self.sources = [
            Source(settings.trades_topic, TRADES, subject_for_topic(settings.trades_topic), validate_trade),
            Source(settings.quotes_topic, QUOTES, subject_for_topic(settings.quotes_topic), validate_quote),
            Source(
                settings.reference_topic, COMPANIES, subject_for_topic(settings.reference_topic), validate_reference
            ),
        ]
        self.stores = dict(stores)
        self._writer: IcebergWriter | None = None
        self._writer_lock = threading.Lock()
        self._registry: WriterSchemaCache | None = None
        self.lake = LakeSchemas(lambda table: self.writer().arrow_schema(table), self._evolve)
        self._send_reject = send_reject
        self._processors: dict[str, IngressProcessor] = {}
        self._stages: dict[str, list[Stage]] = {}
        self.flusher = Flusher(
            [SourceBuffer(s.topic, s.table_name, self.stores[s.topic]) for s in self.sources], self.writer, metrics
        )
        metrics.init_labels([s.topic for s in self.sources], [*(s.table_name for s in self.sources), REJECTS])
        self.flush_pending = False
        self.flushed = asyncio.Event()
        #: The last offset landed in the lake per source partition: read from the tables at
        #: start, then moved forward by every commit (for lake lag without catalog reads).
        self.lake_marks: dict[tuple[str, int], int] = {}
        self.lake_ready = False

    # -- lazily built I/O ------------------------------------------------------------------

    def writer(self) -> IcebergWriter:
        """The Iceberg writer; the first call loads the catalog and creates missing tables (blocking)."""
        with self._writer_lock:
            if self._writer is None:
                catalog = load_k2_catalog(self.settings)
                ensure_tables(catalog)
                self._writer = IcebergWriter.for_settings(catalog, self.settings)
                self._writer.worker_id = self.worker_id
            return self._writer

    @property
    def registry(self) -> WriterSchemaCache:
        if self._registry is None:
            self._registry = WriterSchemaCache.from_settings(self.settings)
        return self._registry

    async def start(self) -> None:
        """Load the catalog, make sure every table exists and read how far each got, off the event loop."""
        await asyncio.to_thread(self.writer)
        await self.reload_lake_marks()
        self.lake_ready = True

    def table_statuses(self) -> list[TableStatus]:
        """Snapshot, commit time, rows and offsets of every table (blocking: catalog reads)."""
        return table_status(self.writer().catalog)

    async def reload_lake_marks(self) -> None:
        """Read the offsets every table records (e.g. after partitions moved here from another worker).

        Also seeds the last-commit timestamp per table, so the commit age after a restart
        is the age of the lake's newest snapshot, not unknown.
        """
        statuses = await asyncio.to_thread(self.table_statuses)
        for st in statuses:
            merge_marks(self.lake_marks, st.offsets)
            if st.committed_at_ms is not None:
                self.metrics.record_commit(st.name, st.committed_at_ms / 1000)

    def _evolve(self, table_name: str, writer_schema: WriterSchema) -> bool:
        writer = self.writer()
        fields = evolve_for(writer_schema, writer.table(table_name).schema())
        return bool(fields) and writer.ensure_columns(table_name, fields)

    # -- the stream ------------------------------------------------------------------------

    def add_stage(self, topic: str, stage: Stage) -> None:
        """Run ``stage`` on every batch of ``topic``, after the core checks (call before the worker starts)."""
        if topic in self._processors:
            raise RuntimeError(f"{topic} is already being processed: add stages before the worker starts")
        self._stages.setdefault(topic, []).append(stage)

    def processor(self, topic: str) -> IngressProcessor:
        proc = self._processors.get(topic)
        if proc is None:
            source = next(s for s in self.sources if s.topic == topic)
            proc = IngressProcessor(
                source,
                self.stores[topic],
                self.registry,
                self.lake,
                self._send_reject,
                self.metrics,
                self.worker_id,
                stages=self._stages.get(topic, ()),
            )
            self._processors[topic] = proc
        return proc

    async def ingest(
        self, topic: str, records: Sequence[RawRecord], request_flush: Callable[[str], Awaitable[None]]
    ) -> None:
        """Process one micro-batch, then trigger a flush (and wait for it) when buffers are full."""
        await self.processor(topic).process(records)
        buffered = sum(self.flusher.publish_buffered_rows().values())
        limit = self.settings.flush_max_rows
        if buffered >= limit:
            if not self.flush_pending:
                self.flush_pending = True
                self.flushed.clear()
                await request_flush("size")
            if buffered >= 2 * limit:
                # Backpressure: stop consuming until the sink has caught up.
                await self.flushed.wait()

    async def flush(self, owned: Mapping[str, set[int]], recovering: bool) -> FlushReport:
        """Run one flush of everything owned, unless partitions are still being restored."""
        self.flush_pending = False
        try:
            if recovering:
                report = FlushReport(skipped="partitions are being recovered")
                return report
            report = await self.flusher.flush(owned)
            for result in report.results:
                merge_marks(self.lake_marks, result.offsets)
            if report.results:
                log.info(
                    "flush: %s",
                    ", ".join(f"{r.table_name} +{r.rows_written} ({r.duration_s:.2f}s)" for r in report.results),
                )
            return report
        finally:
            self.flushed.set()
