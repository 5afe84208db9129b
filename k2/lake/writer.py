"""The only place K2 writes to Iceberg: one atomic, idempotent commit per call.

Every method here does blocking catalog and file I/O. The worker must call them
through ``asyncio.to_thread`` (or an executor), never on the event loop::

    result = await asyncio.to_thread(writer.commit, TRADES, batch, offsets, commit_id)

How a commit stays exactly-once (see :mod:`k2.lake.offsets`):

1. refresh the table and read the offsets its newest K2 snapshot recorded. When the table
   is as this writer's own last commit left it (the metadata that commit returned) and no
   other writer was seen lately, the refresh is skipped: the commit asserts that the table's
   main branch is still at that snapshot and that the table is the same one (pyiceberg's
   ``AssertRefSnapshotId`` and ``AssertTableUUID``, checked by the catalog), so any commit in
   between makes it fail with ``CommitFailedException``, and 4 applies;
2. drop the rows at or below those marks (a replay after a crash, a retry, or a
   partition that moved to this worker after another landed part of it);
3. append (or, for ``reference_data.companies``, upsert) the rest with the merged
   marks in the snapshot summary: data and marks land in one catalog commit;
4. on ``CommitFailedException`` (someone committed first) or
   ``CommitStateUnknownException`` (the answer was lost), back off (not after a skipped
   refresh: that refusal is expected) and go to 1 with fresh metadata; step 2 then drops
   whatever the other commit, or our own lost one, already landed. When it drops nothing,
   the rows are those of the lost attempt and so are its data files: they are committed
   again, not written again (:class:`k2.lake.files.Written`). When it drops anything, the
   files are written anew.

pyiceberg's own commit retry (``commit.retry.num-retries``) must be off for this to
hold, as it replays a commit with its original rows and summary: K2's tables are
created with it off and the writer switches it off on any table where it is not.

A failed attempt may leave unreferenced Parquet files in the warehouse; Iceberg's
orphan-file removal cleans those, they are never read.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import NestedField

from k2.errors import K2Error
from k2.lake import files
from k2.lake.arrow import keep_last
from k2.lake.fileio import Remembered, RememberingFileIO
from k2.lake.laps import Laps
from k2.lake.offsets import (
    COMMIT_ID_KEY,
    batch_offsets,
    filter_committed_rows,
    latest_k2_snapshot,
    merge_offsets,
    offsets_from_summary,
    read_offsets,
    summary_properties,
)
from k2.lake.records import TopicPartition
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, TABLES, TRADES, TableDef
from k2.lake.state import LakeState
from k2.lake.tables import ensure_table, missing_properties
from k2.lake.txn import transaction
from k2.settings import Settings

__all__ = ["CommitResult", "IcebergWriter", "LakeRegressed", "TableRecreated", "default_worker_id"]

_RETRYABLE = (CommitFailedException, CommitStateUnknownException)


class TableRecreated(K2Error):
    """A table's identity (UUID) changed under the worker: it was dropped and created again.

    Its history, and the marks exactly-once relies on, are gone; the pipeline positions
    every partition again from what the lake now records.
    """


class LakeRegressed(K2Error):
    """A table records less than it did: rolled back to an older snapshot, restored from a backup, or emptied.

    What it recorded past its current marks is no longer in the lake; the pipeline lands it
    again from Kafka, from :attr:`starts` (per source partition, the offset after the mark
    the table records now).
    """

    def __init__(self, behind: Mapping[str, Mapping[TopicPartition, tuple[int, int]]]) -> None:
        self.behind = {table: dict(parts) for table, parts in behind.items() if parts}
        """Per table, per source partition: (the mark this worker saw before, the mark now; -1 for none)."""
        shown = "; ".join(
            f"{table} " + ", ".join(f"{t}/{p} {was} -> {now}" for (t, p), (was, now) in sorted(parts.items())[:4])
            for table, parts in sorted(self.behind.items())
        )
        super().__init__(f"the lake went back under this worker (a table rolled back or restored): {shown}")
        self.marks: dict[TopicPartition, int] = {}
        """The marks read when it was noticed (of that table, or merged over every table for :meth:`lake_marks`)."""

    @property
    def starts(self) -> dict[TopicPartition, int]:
        """Per source partition, where to land again from: after the lowest mark any of those tables records now."""
        out: dict[TopicPartition, int] = {}
        for parts in self.behind.values():
            for tp, (_, now) in parts.items():
                out[tp] = min(out.get(tp, now + 1), now + 1)
        return out


def _recreated(exc: BaseException) -> bool:
    return "UUID does not match" in str(exc)


def default_worker_id() -> str:
    """``host:pid``: unique among live workers, readable in a snapshot summary."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class CommitResult:
    """What one :meth:`IcebergWriter.commit` did."""

    table_name: str
    snapshot_id: int | None
    """The snapshot holding this commit's rows; None when there was nothing new to write."""
    rows_written: int
    rows_dropped: int
    """Rows not written because a previous commit already landed their offsets."""
    duration_s: float
    attempts: int
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """The cumulative marks the table records after this call."""
    rows_superseded: int = 0
    """Upsert tables only: older versions of a key in the same batch, replaced by the newest."""
    steps: dict[str, float] = field(default_factory=dict)
    """Wall seconds per step of the commit (:data:`k2.lake.laps.STEPS`), its attempts summed."""
    snapshots: int = 0
    """Snapshots the table's metadata lists after the commit (what each commit reads and writes)."""


class IcebergWriter:
    """Commits Arrow batches to K2's tables, exactly once per Kafka offset.

    Safe to share between threads: commits to one table are serialised by a lock,
    commits to different tables may run in parallel.

    Args:
        catalog: where the tables live (see :func:`k2.catalog.load_k2_catalog`).
        topics: the one topic feeding each single-topic table, by table name
            (``market_data.rejects`` records its source topic per row instead).
        worker_id: written into every commit's summary.
        max_attempts: tries per commit before the conflict is re-raised.
        backoff_s: first retry delay; doubles per attempt (with jitter) up to ``max_backoff_s``.
        sleep: how to wait between attempts (injectable for tests).
        shared_hold_s: after a refresh showed another writer's commit, read the table before every
            commit for this long (workers sharing a table would otherwise lose each first attempt).
    """

    def __init__(
        self,
        catalog: Catalog,
        topics: Mapping[str, str],
        worker_id: str | None = None,
        *,
        max_attempts: int = 6,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        shared_hold_s: float = 60.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        unknown = set(topics) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown K2 tables: {sorted(unknown)}")
        self.catalog = catalog
        self.topics = dict(topics)
        self.worker_id = worker_id or default_worker_id()
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.shared_hold_s = shared_hold_s
        self._locks = {name: threading.Lock() for name in TABLES}
        self.state = LakeState()
        """Per table: the loaded table, its schema, the writer schemas applied, the marks (one owner)."""
        self.remembered = Remembered()
        """The manifests and manifest lists this writer wrote, which its next commits read (:mod:`k2.lake.fileio`)."""

    @classmethod
    def for_settings(cls, catalog: Catalog, settings: Settings) -> IcebergWriter:
        """A writer whose tables are fed by the topics named in ``settings``."""
        topics = {
            TRADES: settings.trades_topic,
            QUOTES: settings.quotes_topic,
            COMPANIES: settings.reference_topic,
            COMPANY_VERSIONS: settings.reference_topic,
        }
        return cls(catalog, topics, settings.worker_id)

    # -- tables -----------------------------------------------------------------------

    def table(self, table_name: str, *, refresh: bool = False) -> Table:
        """The loaded table (cached), refreshed from the catalog when asked."""
        table = self.state.of(table_name).table
        if table is None:
            table = self.catalog.load_table(TABLES[table_name].name)
        elif refresh:
            try:
                table.refresh()
            except ValueError as exc:  # pyiceberg: "Table UUID does not match: current=... != refreshed=..."
                if _recreated(exc):
                    raise TableRecreated(
                        f"{table_name} was dropped and created again under this worker ({exc})"
                    ) from exc
                raise
        if missing_properties(table):
            # pyiceberg would retry conflicts itself with stale offsets: switch that off first.
            table, _ = ensure_table(self.catalog, TABLES[table_name])
        if not isinstance(table.io, RememberingFileIO):  # a load or a refresh brings the catalog's own FileIO
            table.io = RememberingFileIO(table.io, self.remembered)
        self.state.of(table_name).table = table
        return table

    def arrow_schema(self, table_name: str) -> pa.Schema:
        """The table's current Arrow schema, evolved columns included; pass it to ``events_to_arrow``.

        Loads the table on first use (blocking); cached afterwards, and kept current by
        :meth:`commit` and :meth:`ensure_columns`.
        """
        self.table(table_name)
        return self.state.of(table_name).arrow_schema()

    def committed_offsets(self, table_name: str) -> dict[TopicPartition, int]:
        """The marks of the newest K2 commit, read fresh from the catalog.

        Raises:
            LakeRegressed: they are lower than this writer saw before (once: they are the new baseline).
        """
        with self._locks[table_name]:
            marks = read_offsets(self.table(table_name, refresh=True))
            self._see(table_name, marks)
            return marks

    def lake_marks(self) -> dict[TopicPartition, int]:
        """How far the lake got per source partition: the highest mark any K2 table records for it.

        Blocking catalog reads (one refresh per table): call it through ``asyncio.to_thread``.

        Raises:
            LakeRegressed: some table records less than this writer saw before, with the marks
                read (``marks``) and where to land again from (``starts``).
        """
        marks: dict[TopicPartition, int] = {}
        behind: dict[str, dict[TopicPartition, tuple[int, int]]] = {}
        for name in TABLES:
            try:
                table_marks = self.committed_offsets(name)
            except LakeRegressed as exc:
                behind.update(exc.behind)
                table_marks = exc.marks
            marks = merge_offsets(marks, table_marks)
        if behind:
            regressed = LakeRegressed(behind)
            regressed.marks = marks
            raise regressed
        return marks

    def _see(self, table_name: str, marks: Mapping[TopicPartition, int]) -> None:
        """Remember ``marks`` as read; raise :class:`LakeRegressed` if the table records less than before."""
        state = self.state.of(table_name)
        seen = state.marks
        behind = {tp: (was, marks.get(tp, -1)) for tp, was in seen.items() if marks.get(tp, -1) < was}
        state.marks = dict(marks) if behind else merge_offsets(seen, marks)
        if behind:
            regressed = LakeRegressed({table_name: behind})
            regressed.marks = dict(marks)
            raise regressed

    def _note_other_writers(self, table_name: str, table: Table) -> None:
        """After a refresh: if the table moved on from this writer's last commit, hold off trusting it."""
        state = self.state.of(table_name)
        if state.head is not None and table.metadata.current_snapshot_id != state.head:
            state.head = None
            state.other_seen = time.monotonic()

    def forget_tables(self) -> None:
        """Forget what is known of every table (after a table was dropped and created again): see :class:`LakeState`."""
        self.state.forget()
        self.remembered.clear()

    # -- commits ----------------------------------------------------------------------

    def commit(
        self,
        table_name: str,
        batch: pa.Table,
        source_offsets: Mapping[TopicPartition, int],
        commit_id: str,
    ) -> CommitResult:
        """Land ``batch`` in ``table_name`` in one snapshot, skipping rows already landed.

        Blocking: run it in a thread (``asyncio.to_thread``).

        Args:
            table_name: a key of :data:`k2.lake.schemas.TABLES`.
            batch: rows in the table's Arrow schema (``k2.lake.arrow``), lineage columns included.
            source_offsets: the highest offset consumed per (topic, partition) for this batch;
                may exceed the batch's own rows (events rejected in between). Merged with the
                batch's own maxima and the table's previous marks.
            commit_id: unique per call (e.g. a UUID); recorded so a lost answer can be recognised.

        Rows are filtered before anything is written; when none is left no snapshot is
        made (``snapshot_id`` None) and ``source_offsets`` are not recorded, which is
        harmless: on a replay those offsets again yield no row for this table.

        Raises:
            CommitFailedException, CommitStateUnknownException: still conflicting after
                ``max_attempts``; nothing of this batch is in the table unless a later read
                of the offsets says so.
            ValueError: ``batch`` does not fit the table, or ``source_offsets`` names another topic.
        """
        table_def = TABLES[table_name]
        topic = self._topic_of(table_def, source_offsets)
        start = time.perf_counter()
        laps = Laps()
        written = files.Written()  # a retry of the same rows commits the files already written
        with self._locks[table_name]:
            for attempt in range(1, self.max_attempts + 1):
                trusted = attempt == 1 and self.state.of(table_name).trusted(time.monotonic(), self.shared_hold_s)
                table = self.table(table_name, refresh=not trusted)
                if not trusted:
                    self._note_other_writers(table_name, table)
                laps.lap("refresh")
                previous = latest_k2_snapshot(table)
                summary = {} if previous is None or previous.summary is None else previous.summary.additional_properties
                committed = offsets_from_summary(summary)
                self._see(table_name, committed)
                rows, dropped = filter_committed_rows(batch, committed, table_def.position, topic)
                if rows.num_rows == 0:
                    if previous is not None and summary.get(COMMIT_ID_KEY) == commit_id:
                        # An attempt whose answer was lost (CommitStateUnknownException) had landed.
                        return self._landed(table_name, previous.snapshot_id, summary, start, attempt)
                    return CommitResult(table_name, None, 0, dropped, time.perf_counter() - start, attempt, committed)
                marks = merge_offsets(
                    committed, merge_offsets(source_offsets, batch_offsets(rows, table_def.position, topic))
                )
                properties = summary_properties(marks, commit_id, self.worker_id)
                superseded = 0
                laps.lap("plan")
                try:
                    if table_def.upsert_keys:
                        latest = keep_last(rows, table_def.upsert_keys)
                        superseded = rows.num_rows - latest.num_rows
                        rows = latest
                        with transaction(table) as txn:  # as table.upsert, without a copy per metadata read
                            txn.upsert(rows, join_cols=list(table_def.upsert_keys), snapshot_properties=properties)
                            laps.lap("write")  # its manifests included
                        laps.lap("catalog")
                    else:
                        files.append(table, rows, properties, laps, written)  # as table.append, files saying if sorted
                except _RETRYABLE as exc:
                    laps.lap("catalog")
                    if _recreated(exc):
                        raise TableRecreated(
                            f"{table_name} was dropped and created again under this worker ({exc})"
                        ) from exc
                    if attempt == self.max_attempts:
                        raise
                    if not trusted:
                        self._sleep(self._backoff(attempt))
                    continue
                snapshot = table.current_snapshot()
                state = self.state.of(table_name)
                state.marks = merge_offsets(state.marks, marks)
                state.head = None if snapshot is None else snapshot.snapshot_id
                return CommitResult(
                    table_name,
                    None if snapshot is None else snapshot.snapshot_id,
                    rows.num_rows,
                    dropped,
                    time.perf_counter() - start,
                    attempt,
                    marks,
                    superseded,
                    laps.seconds,
                    len(table.metadata.snapshots),
                )
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _landed(
        table_name: str, snapshot_id: int, summary: Mapping[str, str], start: float, attempt: int
    ) -> CommitResult:
        """The result of an earlier attempt of this same commit that turned out to have landed."""
        return CommitResult(
            table_name,
            snapshot_id,
            int(summary.get("added-records", 0)),
            0,
            time.perf_counter() - start,
            attempt,
            offsets_from_summary(summary),
        )

    def _topic_of(self, table_def: TableDef, source_offsets: Mapping[TopicPartition, int]) -> str | None:
        if table_def.position.topic_column is not None:
            return None
        topic = self.topics.get(table_def.name)
        if topic is None:
            raise ValueError(f"no topic configured for {table_def.name}")
        others = {t for t, _ in source_offsets if t != topic}
        if others:
            raise ValueError(f"{table_def.name} is fed by {topic!r}, got offsets of {sorted(others)}")
        return topic

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)

    # -- schema evolution ---------------------------------------------------------------

    def ensure_arrow_columns(self, table_name: str, fields: Sequence[pa.Field]) -> list[str]:
        """Add the columns of ``fields`` the table lacks, as optional; the names added. Blocking.

        For buffered rows that hold a column the table lost (dropped and created again, or written
        by another worker's newer writer schema): the column is added, never its values dropped.
        """
        with self._locks[table_name]:
            for attempt in range(1, self.max_attempts + 1):
                table = self.table(table_name, refresh=True)
                present = {f.name for f in table.schema().fields}
                missing = [f.with_nullable(True) for f in fields if f.name not in present]
                if not missing:
                    return []
                try:
                    with table.update_schema() as update:
                        update.union_by_name(pa.schema(missing))
                except _RETRYABLE:
                    if attempt == self.max_attempts:
                        raise
                    self._sleep(self._backoff(attempt))
                    continue
                return [f.name for f in missing]
        raise AssertionError("unreachable")  # pragma: no cover

    def ensure_columns(self, table_name: str, extra_fields: Sequence[NestedField]) -> bool:
        """Add ``extra_fields`` the table lacks, as optional columns; True if the schema changed.

        Call once per new Avro writer schema (see :func:`k2.lake.evolution.new_optional_fields`).
        Idempotent: columns already present are left alone, so a second call, or a
        worker racing another, changes nothing. Blocking: run it in a thread.
        """
        with self._locks[table_name]:
            for attempt in range(1, self.max_attempts + 1):
                table = self.table(table_name, refresh=True)
                present = {f.name for f in table.schema().fields}
                missing = [f for f in extra_fields if f.name not in present]
                if not missing:
                    return False
                new = Schema(
                    *(NestedField(i, f.name, f.field_type, required=False, doc=f.doc) for i, f in enumerate(missing, 1))
                )
                try:
                    with table.update_schema() as update:
                        update.union_by_name(new)
                except _RETRYABLE:
                    if attempt == self.max_attempts:
                        raise
                    self._sleep(self._backoff(attempt))
                    continue
                return True
        raise AssertionError("unreachable")  # pragma: no cover
