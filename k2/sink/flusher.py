"""The flush: take what is buffered and durable, commit one batch per table, then forget it.

Order matters and is the exactly-once argument:

1. take the chunks of the partitions this worker owns that lie below each partition's
   durable frontier (see :mod:`k2.pipeline.ledger`): never a chunk above a record whose
   own write is not acknowledged, since its mark would later drop that record;
2. commit each table's rows, every table in a worker thread of its own at the same time; the
   writer drops rows at or below the offsets the table already records and records the new
   marks in the same snapshot;
3. only then delete the chunks (tombstones), once every table a chunk feeds has it.

A crash between 2 and 3 leaves chunks whose rows are in Iceberg: the next flush drops
them by offset. Step 3 waits for every table of step 2, so a chunk that feeds two tables is
forgotten only once both have it. A commit that fails leaves its chunks for the next flush; the other
tables go ahead (each records its own marks).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k2.buffer.chunks import GAPS, REJECTS, ROWS, ChunkKey
from k2.buffer.store import ChunkStore
from k2.lake.records import TopicPartition
from k2.lake.schemas import REJECTS as REJECTS_TABLE
from k2.lake.schemas import SEQUENCE_GAPS
from k2.lake.writer import CommitResult, IcebergWriter, LakeRegressed, TableRecreated
from k2.metrics import K2Metrics
from k2.sink.batches import PendingChunk, TableBatch, build_batch_from, columns_missing, combine_chunks, source_offsets

__all__ = ["FlushReport", "Flusher", "SourceBuffer"]

log = logging.getLogger(__name__)

#: Tables one flush commits at the same time, each in a thread of its own (a flush names two to six).
PARALLEL_COMMITS = 4

#: Tables every source feeds, by chunk kind.
SHARED_TABLES = {REJECTS: REJECTS_TABLE, GAPS: SEQUENCE_GAPS}


@dataclass(frozen=True)
class SourceBuffer:
    """A source topic's chunk store and the tables its accepted rows go to."""

    topic: str
    tables: tuple[str, ...]
    store: ChunkStore

    def targets(self, kind: str) -> tuple[str, ...]:
        """The tables chunks of ``kind`` go to: rows to the source's own, the others to a shared one."""
        return self.tables if kind == ROWS else (SHARED_TABLES[kind],)


@dataclass
class FlushReport:
    results: list[CommitResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows_forgotten: int = 0
    """Rows whose chunks left the buffer (every table they feed has them)."""

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
        self._stores = {src.topic: src.store for src in self.sources}
        self._writer = writer
        self.metrics = metrics
        self.clock = clock
        self._lock = asyncio.Lock()
        self._threads = asyncio.Semaphore(PARALLEL_COMMITS)
        self._failing: dict[str, str] = {}
        """Tables whose last commit failed, and how (a failure is logged with its traceback once)."""

    @property
    def failing(self) -> Mapping[str, str]:
        return dict(self._failing)

    def plan(self, frontiers: Mapping[TopicPartition, int]) -> list[TableBatch]:
        """The batches to commit now: chunks of owned partitions that lie wholly below their frontier."""
        per_table: dict[str, list[PendingChunk]] = {}
        for src in self.sources:
            partitions = {p for (t, p) in frontiers if t == src.topic}
            for key in src.store.chunk_keys(partitions):
                if key.last_offset >= frontiers[(src.topic, key.partition)]:
                    continue
                chunk = PendingChunk(src.topic, key, src.store.get(key))
                for table in src.targets(key.kind):
                    per_table.setdefault(table, []).append(chunk)
        return [TableBatch(name, tuple(chunks)) for name, chunks in per_table.items()]

    def buffered_rows(self, partitions: Mapping[str, set[int]] | None = None) -> dict[str, int]:
        """Rows waiting per table (of ``partitions`` by topic, or all held locally)."""
        out: dict[str, int] = {}
        for src in self.sources:
            for table in (*src.tables, *SHARED_TABLES.values()):
                out.setdefault(table, 0)
        for src in self.sources:
            wanted = None if partitions is None else partitions.get(src.topic, set())
            for key in src.store.iter_keys():
                if wanted is None or key.partition in wanted:
                    for table in src.targets(key.kind):
                        out[table] += key.rows
        return out

    async def flush(self, frontiers: Mapping[TopicPartition, int]) -> FlushReport:
        """Commit everything durable for the partitions in ``frontiers``; one flush at a time."""
        async with self._lock:
            report = FlushReport()
            done: dict[tuple[str, ChunkKey], int] = {}
            batches = self.plan(frontiers)
            # Each table in its own thread, all at once: what a flush makes visible waits for the
            # slowest table's commit, not for the sum of them (the writer serialises one table only).
            outcomes = await asyncio.gather(
                *(self._commit_in_thread(batch) for batch in batches), return_exceptions=True
            )
            lost = [o for o in outcomes if isinstance(o, TableRecreated | LakeRegressed)]
            if lost:
                raise lost[0]  # marks are gone, not just this table's commit: the pipeline positions again
            for batch, result in zip(batches, outcomes, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result  # cancelled, or the process is going down: nothing is acknowledged
                    # A failed table must not stop the others; its chunks stay for the next flush.
                    self._failed(batch, result)
                    report.failed[batch.table_name] = f"{type(result).__name__}: {result}"
                    continue
                if batch.table_name in self._failing:
                    log.info("commit to %s works again", batch.table_name)
                    del self._failing[batch.table_name]
                for chunk in batch.chunks:
                    done[(chunk.topic, chunk.key)] = done.get((chunk.topic, chunk.key), 0) + 1
                report.results.append(result)
                self._count(result)
                self._observe_age(batch, result)
            report.rows_forgotten = await self._forget(done)
            owned: dict[str, set[int]] = {}
            for topic, partition in frontiers:
                owned.setdefault(topic, set()).add(partition)
            self.publish_buffered_rows(owned)
            return report

    async def _commit_in_thread(self, batch: TableBatch) -> CommitResult:
        """:meth:`_commit` in the loop's default executor, at most :data:`PARALLEL_COMMITS` at once: the
        executor (cores + 4 threads) stays open to the worker's other blocking calls (marks, registry)."""
        async with self._threads:
            return await asyncio.to_thread(self._commit, batch)

    def _failed(self, batch: TableBatch, exc: BaseException) -> None:
        self.metrics.commit_failures.labels(batch.table_name).inc()
        what = f"{type(exc).__name__}: {exc}"
        if self._failing.get(batch.table_name) == what:
            log.warning("commit to %s failed again (%s); its %d rows stay buffered", batch.table_name, what, batch.rows)
        else:
            log.error(
                "commit to %s failed; its %d rows stay buffered and are retried at the next flush",
                batch.table_name,
                batch.rows,
                exc_info=exc,
            )
        self._failing[batch.table_name] = what

    def _commit(self, batch: TableBatch) -> CommitResult:
        """Blocking: build the batch and commit it (runs in a worker thread).

        Buffered rows can hold a column the table lacks (the table was created again under the
        worker, or another worker's newer writer schema wrote them): the column is added first,
        so no value is ever dropped to fit the table.
        """
        writer = self._writer()
        name = batch.table_name
        rows = combine_chunks(batch)
        missing = columns_missing(rows, writer.arrow_schema(name))
        if missing:
            added = writer.ensure_arrow_columns(name, missing)
            if added:
                log.warning("%s: added column(s) %s that buffered rows hold", name, ", ".join(added))
        rows = build_batch_from(rows, name, writer.arrow_schema(name))
        return writer.commit(name, rows, source_offsets(batch.chunks), uuid.uuid4().hex)

    async def _forget(self, done: Mapping[tuple[str, ChunkKey], int]) -> int:
        """Tombstone the chunks every target table committed (a lost tombstone is harmless: marks drop the rows)."""
        rows = 0
        for src in self.sources:
            keys = [key for (topic, key), n in done.items() if topic == src.topic and n >= len(src.targets(key.kind))]
            if keys:
                for fut in await src.store.remove(keys):
                    fut.add_done_callback(_log_lost_tombstone)
                rows += sum(k.rows for k in keys)
        return rows

    def _count(self, result: CommitResult) -> None:
        table = result.table_name
        self.metrics.flushes.labels(table).inc()
        self.metrics.commit_attempts.labels(table).inc(result.attempts)
        self.metrics.rows_written.labels(table).inc(result.rows_written)
        self.metrics.rows_skipped.labels(table).inc(result.rows_dropped)
        if result.snapshot_id is not None:
            self.metrics.commit_duration.labels(table).observe(result.duration_s)
            for step, seconds in result.steps.items():
                self.metrics.commit_steps.labels(table, step).observe(seconds)
            self.metrics.table_snapshots.labels(table).set(result.snapshots)
            self.metrics.record_commit(table, self.clock())

    def _observe_age(self, batch: TableBatch, result: CommitResult) -> None:
        """How old the oldest event this commit made visible was: since produced, and since this worker took it."""
        if result.snapshot_id is None:
            return
        stores = self._stores
        known = [t for t in (stores[c.topic].times(c.key) for c in batch.chunks if c.topic in stores) if t is not None]
        if not known:
            return  # restored chunks only: their times are not known
        now = self.clock()
        produced = [ms for ms, _ in known if ms]
        if produced:
            self.metrics.commit_event_age.labels(batch.table_name).observe(max(0.0, now - min(produced) / 1000))
        self.metrics.commit_event_wait.labels(batch.table_name).observe(max(0.0, now - min(t for _, t in known)))

    def publish_buffered_rows(self, partitions: Mapping[str, set[int]] | None = None) -> dict[str, int]:
        """Set the buffered-rows gauge per table; returns the counts."""
        rows = self.buffered_rows(partitions)
        for table, count in rows.items():
            self.metrics.buffered_rows.labels(table).set(count)
        return rows


def _log_lost_tombstone(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a tombstone did not reach the changelog (harmless: the lake's marks drop its rows)")
