"""The Iceberg side of a worker: the catalog, the flush loop, the lake's marks, maintenance.

One flush at a time, whenever the flush gate has a request (timer, size, room). A flush
commits what is durable below each consuming partition's frontier (:mod:`k2.sink.flusher`
holds the exactly-once order). When the lake lost history under the worker (a table
recreated, or rolled back), the affected partitions go back to *positioning* and land again
from what the lake records now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from faust.types import TP

from k2.catalog import load_k2_catalog
from k2.lake.maintain import MaintainPolicy, expire_table, maintain_table
from k2.lake.records import TopicPartition
from k2.lake.schemas import TABLES
from k2.lake.status import TableStatus, table_status
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter, LakeRegressed, TableRecreated
from k2.metrics import K2Metrics
from k2.pipeline.gate import FlushGate
from k2.pipeline.ledger import Ledger
from k2.pipeline.lifecycle import Lifecycle
from k2.pipeline.positioning import Positioner
from k2.retry import retry_unavailable
from k2.settings import Settings
from k2.sink.flusher import Flusher, FlushReport

__all__ = ["Sink", "record_commit_times"]

log = logging.getLogger(__name__)


class Sink:
    """The catalog and writer, the flush loop and the lake's marks of one worker."""

    def __init__(
        self,
        settings: Settings,
        metrics: K2Metrics,
        worker_id: str,
        lifecycle: Lifecycle,
        ledger: Ledger,
        gate: FlushGate,
        positioner: Positioner,
        ready: asyncio.Event,
        make_flusher: Callable[[Callable[[], IcebergWriter]], Flusher],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.worker_id = worker_id
        self.lifecycle = lifecycle
        self.ledger = ledger
        self.gate = gate
        self.positioner = positioner
        self.flusher = make_flusher(self.writer)
        self._writer: IcebergWriter | None = None
        self.ready = ready
        self.error: str | None = None
        """Why the catalog is not loaded (None once it is)."""
        self.paused = False
        """Set while partitions are revoked and at shutdown: the loop takes no request."""
        self._flushing: asyncio.Task[FlushReport] | None = None
        self._lake_check: asyncio.Future[None] | None = None
        self.last_flush: FlushReport | None = None

    # -- the catalog ----------------------------------------------------------------------------

    def writer(self) -> IcebergWriter:
        """The Iceberg writer; the first call loads the catalog and creates missing tables (blocking)."""
        if self._writer is None:
            catalog = load_k2_catalog(self.settings)
            ensure_tables(catalog)
            writer = IcebergWriter.for_settings(catalog, self.settings)
            writer.worker_id = self.worker_id
            self._writer = writer
        return self._writer

    async def load(self) -> None:
        """Load the catalog and make sure every table exists, waiting out an unavailable catalog."""

        def unavailable(cause: str) -> None:
            self.error = cause

        timeout = self.settings.catalog_timeout_s * 3
        await retry_unavailable(
            lambda: asyncio.wait_for(asyncio.to_thread(self.writer), timeout),
            what="loading the Iceberg catalog",
            on_unavailable=unavailable,
        )
        self.error = None
        self.ready.set()
        self.positioner.wake()
        log.info("Iceberg catalog loaded, tables present")
        try:  # the commit age after a restart is that of the lake's newest snapshot, not unknown
            statuses = await asyncio.wait_for(
                asyncio.to_thread(table_status, self.writer().catalog), self.settings.catalog_timeout_s * 2
            )
            record_commit_times(self.metrics, statuses)
        except Exception as exc:
            log.warning("could not read the tables' last commit times: %s: %s", type(exc).__name__, exc)

    @property
    def marks(self) -> dict[TopicPartition, int]:
        """The last offset landed per source partition, as last read or committed (the writer's :class:`LakeState`)."""
        return self._writer.state.marks() if self._writer is not None else {}

    async def read_marks(self) -> dict[TopicPartition, int]:
        """The lake's marks, read now (raises :class:`LakeRegressed` when a table records less than it did).

        A table found dropped and created again (:class:`TableRecreated`) is handled here, wherever the
        marks are read (positioning, the idle lake check): every table is forgotten, the consuming
        partitions are positioned again, and the marks are read afresh. A table recreated after this
        worker last committed to it, on a topic with nothing more to send, is noticed only so.
        """
        read = self.writer().lake_marks
        try:
            return await asyncio.wait_for(asyncio.to_thread(read), self.settings.catalog_timeout_s * 2)
        except TableRecreated as exc:
            await self.tables_recreated(exc)
            return await asyncio.wait_for(asyncio.to_thread(read), self.settings.catalog_timeout_s * 2)

    # -- flushing -------------------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool]) -> None:
        """The Iceberg sink: one flush at a time, whenever the gate has a request."""
        while not should_stop():
            reason = await self.gate.next_request()
            if self.paused or not self.ready.is_set():
                continue  # the timer asks again
            self._flushing = asyncio.ensure_future(self.flush())
            try:
                await asyncio.shield(self._flushing)
            except Exception:
                log.exception("flush (%s) failed", reason)

    async def wait_flushing(self, timeout_s: float) -> None:
        """Let a flush in progress finish (bounded)."""
        if self._flushing is not None and not self._flushing.done():
            await asyncio.wait([self._flushing], timeout=timeout_s)

    async def flush(self) -> FlushReport:
        frontiers = {
            (tp.topic, tp.partition): f for tp, f in self.ledger.frontiers().items() if self.lifecycle.state(tp)
        }
        try:
            report = await self.flusher.flush(frontiers)
        except TableRecreated as exc:
            await self.tables_recreated(exc)
            return FlushReport()
        except LakeRegressed as exc:
            self.lake_went_back(exc, self.lifecycle.consuming_set())
            return FlushReport()
        if report.results:
            log.info(
                "flush: %s",
                ", ".join(f"{r.table_name} +{r.rows_written} ({r.duration_s:.2f}s)" for r in report.results),
            )
        self.gate.removed(report.rows_forgotten)
        self.last_flush = report
        return report

    # -- the lake went back under the worker -----------------------------------------------------

    async def tables_recreated(self, exc: TableRecreated) -> None:
        """A table was dropped and created again: load every table afresh and position every partition again."""
        log.error("%s; positioning every partition again from what the lake records now", exc)
        self.writer().forget_tables()
        self.reposition(self.lifecycle.consuming_set())

    def lake_went_back(self, exc: LakeRegressed, owned: Iterable[TP]) -> None:
        """A table records less than it did: land ``owned`` partitions again from there (see :class:`LakeRegressed`)."""
        owned = set(owned)
        starts = {TP(t, p): start for (t, p), start in exc.starts.items() if TP(t, p) in owned}
        for table in exc.behind:
            self.metrics.lake_regressions.labels(table).inc()
        floors = self.positioner.floors
        for tp, start in starts.items():
            floors[tp] = min(start, floors.get(tp, start))
        log.error(
            "%s; landing %d owned partition(s) again from Kafka from there%s",
            exc,
            len(starts),
            "" if starts else " (none of them is this worker's)",
        )
        self.reposition(starts)

    def reposition(self, tps: Iterable[TP]) -> None:
        """Send consuming ``tps`` back to positioning: paused, forgotten by the ledger, sought again."""
        again = self.lifecycle.reposition(tps)
        if again:
            self.ledger.forget(again)
            self.positioner.pause(again)
            self.positioner.wake()

    def request_lake_check(self) -> None:
        """Start :meth:`check_lake` in the background, unless one is still running (a commit may hold a table)."""
        if self._lake_check is None or self._lake_check.done():
            self._lake_check = asyncio.ensure_future(self.check_lake())
            self._lake_check.add_done_callback(_log_failure)

    async def check_lake(self) -> None:
        """Read the lake's marks (the lag views show them) and notice a table that went back while idle.

        A flush notices it too, before it commits; this finds it when there is nothing to flush.
        """
        if not self.ready.is_set() or self.paused or self.lifecycle.to_position():
            return
        try:
            await self.read_marks()
        except LakeRegressed as exc:
            self.lake_went_back(exc, self.lifecycle.consuming_set())
        except Exception as exc:  # the catalog is down: the flush and readiness say so
            log.debug("lake check: %s: %s", type(exc).__name__, exc)

    # -- maintenance -----------------------------------------------------------------------------

    async def maintain(self, *, expire_only: bool = False) -> None:
        """Compact, expire and remove orphans in every table (``K2_MAINTAIN_*``; see :mod:`k2.lake.maintain`).

        ``expire_only``: snapshot expiry alone (metadata only, cheap: the frequent timer's job).

        Concurrent commits of this worker's flush and of other workers make a compaction
        conflict and plan again; they are never dropped.
        """
        if not self.ready.is_set():
            return
        catalog = self.writer().catalog
        policy = MaintainPolicy.from_settings(self.settings)
        for table_def in TABLES.values():
            try:
                job = expire_table if expire_only else maintain_table
                result = await asyncio.to_thread(job, catalog, table_def, policy)
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


def record_commit_times(metrics: K2Metrics, statuses: Iterable[TableStatus]) -> None:
    """Seed the last-commit time of each table from its newest snapshot (times only move forward)."""
    for st in statuses:
        if st.committed_at_ms is not None:
            metrics.record_commit(st.name, st.committed_at_ms / 1000)


def _log_failure(fut: asyncio.Future[None]) -> None:
    """A background check that raised is logged, never swallowed."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("lake check failed", exc_info=fut.exception())
