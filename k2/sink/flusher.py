"""The flush: take what is buffered, commit one batch per table, then forget it.

Order matters and is the exactly-once argument:

1. take a snapshot of the chunks of the partitions this worker owns (a prefix of each
   partition's events: chunks are appended in offset order);
2. commit each table's rows in a worker thread; the writer drops rows at or below the
   offsets the table already records and records the new marks in the same snapshot;
3. only then delete the chunks (tombstones in the changelog).

A crash between 2 and 3 leaves chunks whose rows are in Iceberg: the next flush drops
them by offset. A crash before 2 leaves chunks that the next owner restores and lands.
Flushing is skipped while partitions are being recovered, because a partial restore is
not a prefix, and committing its tail would mark its head as done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from k2.buffer.chunks import GAPS, REJECTS, ROWS
from k2.buffer.store import ChunkStore
from k2.lake.schemas import REJECTS as REJECTS_TABLE
from k2.lake.schemas import SEQUENCE_GAPS
from k2.lake.writer import CommitResult, IcebergWriter
from k2.metrics import K2Metrics
from k2.sink.batches import PendingChunk, TableBatch, build_batch, source_offsets

__all__ = ["FlushReport", "Flusher", "SourceBuffer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceBuffer:
    """A source topic's chunk store and the market table its accepted rows go to."""

    topic: str
    table_name: str
    store: ChunkStore

    def target(self, kind: str) -> str:
        """The table chunks of ``kind`` go to: rows to the source's own, the others to a shared one."""
        return self.table_name if kind == ROWS else SHARED_TABLES[kind]


#: Tables every source feeds, by chunk kind.
SHARED_TABLES = {REJECTS: REJECTS_TABLE, GAPS: SEQUENCE_GAPS}


@dataclass
class FlushReport:
    results: list[CommitResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def rows_written(self) -> int:
        return sum(r.rows_written for r in self.results)


class Flusher:
    """Commits the buffers of all sources: one Iceberg commit per table per flush."""

    def __init__(
        self,
        sources: Sequence[SourceBuffer],
        writer: Callable[[], IcebergWriter],
        metrics: K2Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = list(sources)
        self._writer = writer
        self.metrics = metrics
        self.clock = clock
        self._lock = asyncio.Lock()

    def plan(self, owned: Mapping[str, set[int]]) -> list[TableBatch]:
        """The batches to commit now, from the chunks of the partitions in ``owned`` (topic -> partitions)."""
        per_table: dict[str, list[PendingChunk]] = {}
        for src in self.sources:
            for key in src.store.chunk_keys(owned.get(src.topic, set())):
                per_table.setdefault(src.target(key.kind), []).append(PendingChunk(src.topic, key, src.store.get(key)))
        return [TableBatch(name, tuple(chunks)) for name, chunks in per_table.items()]

    def buffered_rows(self) -> dict[str, int]:
        """Rows waiting per table (all partitions held locally)."""
        out: dict[str, int] = {src.table_name: 0 for src in self.sources}
        for table in SHARED_TABLES.values():
            out.setdefault(table, 0)
        for src in self.sources:
            for key in src.store.iter_keys():
                out[src.target(key.kind)] += key.rows
        return out

    async def flush(self, owned: Mapping[str, set[int]]) -> FlushReport:
        """Commit everything buffered for ``owned`` partitions; one flush at a time."""
        async with self._lock:
            report = FlushReport()
            for batch in self.plan(owned):
                try:
                    result = await asyncio.to_thread(self._commit, batch)
                except Exception as exc:  # a failed table must not stop the others; chunks stay for the next flush
                    self.metrics.commit_failures.labels(batch.table_name).inc()
                    report.failed[batch.table_name] = f"{type(exc).__name__}: {exc}"
                    log.exception("commit to %s failed; its %d rows stay buffered", batch.table_name, batch.rows)
                    continue
                await self._forget(batch)
                report.results.append(result)
                self._count(result)
            self.publish_buffered_rows()
            return report

    def _commit(self, batch: TableBatch) -> CommitResult:
        """Blocking: build the batch and commit it (runs in a worker thread)."""
        writer = self._writer()
        rows = build_batch(batch, writer.arrow_schema(batch.table_name))
        return writer.commit(batch.table_name, rows, source_offsets(batch.chunks), uuid.uuid4().hex)

    async def _forget(self, batch: TableBatch) -> None:
        """Tombstone the committed chunks (losing a tombstone is harmless: the marks drop the rows)."""
        by_topic: dict[str, list[PendingChunk]] = {}
        for chunk in batch.chunks:
            by_topic.setdefault(chunk.topic, []).append(chunk)
        for src in self.sources:
            if src.topic in by_topic:
                await src.store.remove(c.key for c in by_topic[src.topic])

    def _count(self, result: CommitResult) -> None:
        table = result.table_name
        self.metrics.flushes.labels(table).inc()
        self.metrics.rows_written.labels(table).inc(result.rows_written)
        self.metrics.rows_skipped.labels(table).inc(result.rows_dropped)
        if result.snapshot_id is not None:
            self.metrics.commit_duration.labels(table).observe(result.duration_s)
            self.metrics.record_commit(table, self.clock())

    def publish_buffered_rows(self) -> dict[str, int]:
        """Set the buffered-rows gauge per table (after each micro-batch and each flush); returns the counts."""
        rows = self.buffered_rows()
        for table, count in rows.items():
            self.metrics.buffered_rows.labels(table).set(count)
        return rows
