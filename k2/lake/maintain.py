"""Table maintenance that keeps the sink's marks: compaction, snapshot expiry, orphan files.

A streaming sink commits every few seconds, so a table collects small files and snapshots
(Iceberg's Kafka Connect sink leaves them to pile up). Three operations, each its own
commit, none of which may break exactly-once:

* **compact**: the data files of a day partition before today, when there are at least
  ``min_files`` smaller than the target, are read, sorted in the table's order and written
  again as files of the target size, a group of files of at most ``group_rows`` rows at a
  time (memory holds one group, not the day), in one ``replace`` snapshot that swaps exactly
  those files (:mod:`k2.lake.rewrite`): no row added or removed, so a reader that follows the table
  (an incremental append scan, Spark Structured Streaming) skips it, and time travel never
  sees a day half compacted. The snapshot carries the table's current marks in its summary
  (with a commit id of its own), because the worker's exactly-once drop, lake lag and
  ``k2 audit`` read the newest K2 snapshot. The commit requires the table to be still at the
  snapshot it was planned from (pyiceberg's ``AssertRefSnapshotId``), so a worker that
  commits meanwhile makes it fail. If every file the rewrite read is still live (the worker
  only added files), the same rewrite is committed again on the new snapshot, with the marks
  the table holds now: a worker commits every few seconds, a day's rewrite takes longer, and
  redone from scratch it would never land. Otherwise it is planned again from fresh metadata.
  Rows committed concurrently are never dropped: a replace removes only the files it read.
* **expire**: snapshots older than the retention, or beyond the newest ``max_snapshots``
  however young, are removed from the metadata; the newest ``keep_snapshots``, the current
  one and the newest one holding marks never.
  A reader following the table resumes after the last snapshot it read, so one whose last
  snapshot was expired must start again: what was expired is said (a note, and
  ``expired_until``), and the retention must exceed how far such a reader may fall behind.
* **orphans**: files under the table's location that no remaining snapshot or metadata
  file refers to, and older than ``orphan_min_age_s`` (a commit in flight may have written
  files it has not committed yet), are deleted.

Blocking catalog and file I/O throughout: run it in a thread (``k2 maintain`` is a command;
a worker that maintains on a timer calls it through ``asyncio.to_thread``).
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
from pyarrow.fs import FileSelector, FileType
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException, ValidationException
from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation, Snapshot
from pyiceberg.table.update.snapshot import ExpireSnapshots
from pyiceberg.transforms import DayTransform

from k2.lake.arrow import sort_for_table
from k2.lake.files import write_data_files
from k2.lake.offsets import COMMIT_ID_KEY, OFFSET_KEY_PREFIX, WORKER_ID_KEY, latest_k2_snapshot
from k2.lake.rewrite import replace_files
from k2.lake.schemas import TableDef
from k2.lake.txn import transaction
from k2.settings import Settings

__all__ = ["MAINTENANCE_KEY", "MaintainPolicy", "TableMaintenance", "expire_table", "maintain_table"]

MAINTENANCE_KEY = "k2.maintenance"
"""Snapshot-summary key naming what a maintenance commit did (``compact <day>``)."""
_WORKER = "k2-maintain"
_TARGET_SIZE = "write.target-file-size-bytes"
_DAY_US = 86_400_000_000
#: A commit that did not land because the table moved on since the plan: plan again.
_CONFLICTS = (CommitFailedException, CommitStateUnknownException, ValidationException)


@dataclass(frozen=True)
class MaintainPolicy:
    snapshot_retention_s: float = 3600.0
    keep_snapshots: int = 50
    max_snapshots: int = 1000
    orphan_min_age_s: float = 86_400.0
    target_file_bytes: int = 128 * 2**20
    min_files: int = 4
    group_rows: int = 1_000_000
    max_attempts: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> MaintainPolicy:
        """The policy the ``K2_MAINTAIN_*`` settings describe."""
        return cls(
            snapshot_retention_s=settings.maintain_snapshot_retention_s,
            keep_snapshots=settings.maintain_keep_snapshots,
            max_snapshots=settings.maintain_max_snapshots,
            orphan_min_age_s=settings.maintain_orphan_min_age_s,
            target_file_bytes=settings.maintain_target_file_mb * 2**20,
            min_files=settings.maintain_min_files,
            group_rows=settings.maintain_compact_group_rows,
        )


@dataclass
class TableMaintenance:
    """What maintenance did to one table."""

    table: str
    compacted: list[tuple[str, int, int]] = field(default_factory=list)
    """Per rewritten day: (day, files before, files after)."""
    expired: int = 0
    expired_until: str | None = None
    """Commit time (UTC, ISO) of the newest snapshot expired: a reader that last read one as old must start again."""
    orphans: int = 0
    orphan_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    """What was left alone and why (a conflict that persisted, a file system that cannot be listed)."""


def maintain_table(
    catalog: Catalog,
    table_def: TableDef,
    policy: MaintainPolicy,
    *,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    dry_run: bool = False,
) -> TableMaintenance:
    """Compact, expire and remove orphans of one table, in that order (see the module docstring)."""
    out = TableMaintenance(table_def.name)
    table = catalog.load_table(table_def.name)
    for day in _days_to_compact(table, policy, now()):
        _compact_day(catalog, table_def, day, policy, out, sleep, dry_run)
    table = catalog.load_table(table_def.name)
    _expire(table, policy, now(), out, dry_run)
    table = catalog.load_table(table_def.name)
    _remove_orphans(table, policy, now(), out, dry_run)
    return out


def expire_table(
    catalog: Catalog, table_def: TableDef, policy: MaintainPolicy, *, now: Callable[[], float] = time.time
) -> TableMaintenance:
    """Snapshot expiry alone: the table's metadata only, no data file read or written (see the module docstring)."""
    out = TableMaintenance(table_def.name)
    _expire(catalog.load_table(table_def.name), policy, now(), out, dry_run=False)
    return out


# -- compaction -------------------------------------------------------------------------------


def _day_source(table: Table) -> tuple[str, int] | None:
    """(source column, partition field position) of the table's day partition, if it has one."""
    spec = table.spec()
    for position, pf in enumerate(spec.fields):
        if isinstance(pf.transform, DayTransform):
            name = table.schema().find_column_name(pf.source_id)
            if name is not None:
                return name, position
    return None


def _days_to_compact(table: Table, policy: MaintainPolicy, now_s: float) -> list[int]:
    """Days (since the epoch) before today with at least ``min_files`` files below the target size."""
    source = _day_source(table)
    if source is None or table.current_snapshot() is None:
        return []
    _, position = source
    today = int(now_s // 86_400)
    small: dict[int, int] = {}
    for task in table.scan().plan_files():
        data_file = task.file
        day = data_file.partition[position]
        if day is None or day >= today:
            continue
        if data_file.file_size_in_bytes < policy.target_file_bytes:
            small[day] = small.get(day, 0) + 1
    return sorted(day for day, count in small.items() if count >= policy.min_files)


def _day_files(table: Table, day: int) -> list[FileScanTask]:
    """The live data files of ``day``'s partition (in the table's current partition spec)."""
    source = _day_source(table)
    assert source is not None
    column, position = source
    day_filter = And(
        GreaterThanOrEqual(term=column, value=day * _DAY_US), LessThan(term=column, value=(day + 1) * _DAY_US)
    )
    spec_id = table.spec().spec_id
    return [
        task
        for task in table.scan(row_filter=day_filter).plan_files()
        if task.file.spec_id == spec_id and task.file.partition[position] == day
    ]


def _compact_day(
    catalog: Catalog,
    table_def: TableDef,
    day: int,
    policy: MaintainPolicy,
    out: TableMaintenance,
    sleep: Callable[[float], None],
    dry_run: bool,
) -> None:
    label = (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
    rewritten: tuple[frozenset[str], list[DataFile]] | None = None
    """The files the day's rewrite read, and those it wrote for them (kept across attempts)."""
    for attempt in range(1, policy.max_attempts + 1):
        table = catalog.load_table(table_def.name)  # the snapshot planned from, and the one the commit requires
        tasks = _day_files(table, day)
        live = {task.file.file_path: task.file for task in tasks}
        written: list[DataFile] | None = None
        if rewritten is not None and rewritten[0] <= live.keys():
            # Only other files were committed since (a worker's appends): the same rewrite, committed again
            # on this snapshot. Reading and writing the day again would take as long and conflict again.
            removed, written = [live[path] for path in sorted(rewritten[0])], rewritten[1]
        else:
            if sum(1 for task in tasks if task.file.file_size_in_bytes < policy.target_file_bytes) < policy.min_files:
                if attempt > 1:  # compacted meanwhile: by another maintenance, or by our attempt whose answer was lost
                    out.notes.append(f"compact {label}: found compacted when planned again")
                return
            if dry_run:
                out.compacted.append((label, len(tasks), -1))
                return
            if any(task.delete_files for task in tasks):
                out.notes.append(f"compact {label}: rows of that day are deleted by delete files; left alone")
                return
            removed = [task.file for task in tasks]
        properties = carried_marks(table) | {MAINTENANCE_KEY: f"compact {label}"}
        target = str(policy.target_file_bytes)
        try:
            with transaction(table) as txn:
                if table.properties.get(_TARGET_SIZE) != target:  # what pyiceberg's writer cuts files at
                    txn.set_properties({_TARGET_SIZE: target})
                if written is None:
                    written = []
                    for group in _groups(tasks, policy.group_rows):  # one group in memory at a time
                        rows = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(group)
                        written += write_data_files(txn.table_metadata, table.io, sort_for_table(rows, table_def))
                        del rows
                    rewritten = (frozenset(live), written)
                replace_files(txn, table.io, removed, written, properties)
        except _CONFLICTS as exc:
            if attempt == policy.max_attempts:
                out.notes.append(f"compact {label}: still conflicting after {attempt} attempts ({exc})")
                return
            sleep(min(5.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0))
            continue
        out.compacted.append((label, len(removed), len(written)))
        return


def _groups(tasks: list[FileScanTask], max_rows: int) -> list[list[FileScanTask]]:
    """``tasks`` in order, in runs of at most ``max_rows`` rows (a file of more than that alone)."""
    out: list[list[FileScanTask]] = []
    rows = 0
    for task in tasks:
        if not out or rows + task.file.record_count > max_rows:
            out.append([])
            rows = 0
        out[-1].append(task)
        rows += task.file.record_count
    return out


def carried_marks(table: Table) -> dict[str, str]:
    """The marks of the table's newest K2 snapshot, as a maintenance commit's summary carries them forward."""
    snapshot = latest_k2_snapshot(table)
    summary = {} if snapshot is None or snapshot.summary is None else snapshot.summary.additional_properties
    marks = {k: v for k, v in summary.items() if k.startswith(OFFSET_KEY_PREFIX)}
    return marks | {COMMIT_ID_KEY: f"maintain-{uuid.uuid4().hex}", WORKER_ID_KEY: _WORKER}


# -- snapshot expiry --------------------------------------------------------------------------


def _expire(table: Table, policy: MaintainPolicy, now_s: float, out: TableMaintenance, dry_run: bool) -> None:
    for attempt in range(1, policy.max_attempts + 1):
        expired = _expirable(table, policy, now_s)
        if not expired or dry_run:
            break
        try:
            # pyiceberg's own builder (table.maintenance.expire_snapshots()) reads its transaction's
            # metadata twice per snapshot, each read a deep copy of every snapshot: through K2's
            # transaction the metadata is computed once (k2.lake.txn).
            with transaction(table) as txn:
                ExpireSnapshots(txn).by_ids([s.snapshot_id for s in expired]).commit()
            break
        except (*_CONFLICTS, ValueError):
            # Another expiry (the leader's timer, `k2 maintain`) or a commit came first: plan again. A
            # snapshot removed meanwhile is a ValueError where the catalog applies the removal to what
            # it holds ("Snapshot with snapshot id ... does not exist"; pyiceberg's SQL catalog).
            if attempt == policy.max_attempts:
                raise
            table = table.refresh()
    if not expired:
        return
    out.expired = len(expired)
    out.expired_until = _utc(expired[0].timestamp_ms)
    # A reader that follows the table resumes after the last snapshot it read: gone, it cannot.
    out.notes.append(
        f"{'would expire' if dry_run else 'expired'} {len(expired)} snapshot(s) committed "
        f"{_utc(expired[-1].timestamp_ms)} to {out.expired_until}: a reader following the table "
        f"(incremental or streaming) whose last snapshot read is one of them must start again"
    )


def _expirable(table: Table, policy: MaintainPolicy, now_s: float) -> list[Snapshot]:
    """Snapshots older than the retention or beyond the newest ``max_snapshots``, newest first; never the
    newest ``keep_snapshots``, the current one or the newest holding the marks."""
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    keep = {s.snapshot_id for s in snapshots[: policy.keep_snapshots]}
    current = table.current_snapshot()
    if current is not None:
        keep.add(current.snapshot_id)
    marked = latest_k2_snapshot(table)
    if marked is not None:
        keep.add(marked.snapshot_id)
    cutoff_ms = (now_s - policy.snapshot_retention_s) * 1000
    return [
        s
        for i, s in enumerate(snapshots)
        if s.snapshot_id not in keep and (s.timestamp_ms < cutoff_ms or i >= policy.max_snapshots)
    ]


def _utc(timestamp_ms: int) -> str:
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC).isoformat(timespec="seconds")


# -- orphan files -----------------------------------------------------------------------------


def referenced_paths(table: Table) -> set[str]:
    """Every file a remaining snapshot or metadata version of ``table`` refers to (as file-system paths).

    A data file a remaining snapshot removed still counts (a reader of that snapshot's changes
    may read it), unless that snapshot is a ``replace``: it changed no row, no reader reads what
    it swapped out, the rows are in the files it added. (A file removed by an expired snapshot
    counts only where a remaining snapshot still holds it.)
    """
    io = table.io
    metadata = table.metadata
    uris: set[str] = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    uris.update(s.statistics_path for s in metadata.statistics)
    uris.update(s.statistics_path for s in metadata.partition_statistics)
    operations = {s.snapshot_id: s.summary.operation for s in metadata.snapshots if s.summary is not None}
    manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        uris.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in manifests:  # shared by many snapshots: read it once
                continue
            manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                removed_by = operations.get(entry.snapshot_id or -1)  # for a deleted entry: the snapshot that did
                if entry.status != ManifestEntryStatus.DELETED or removed_by not in (None, Operation.REPLACE):
                    uris.add(entry.data_file.file_path)
    uris.update(manifests)
    return {_path(io, uri) for uri in uris}


def _path(io: object, uri: str) -> str:
    _, _, path = io.parse_location(uri, getattr(io, "properties", {}))  # type: ignore[attr-defined]
    return str(path)


def _remove_orphans(table: Table, policy: MaintainPolicy, now_s: float, out: TableMaintenance, dry_run: bool) -> None:
    io = table.io
    fs_by_scheme = getattr(io, "fs_by_scheme", None)
    if fs_by_scheme is None:  # pragma: no cover - only pyiceberg's PyArrowFileIO can list
        out.notes.append(f"orphan files: {type(io).__name__} cannot list files; left alone")
        return
    scheme, netloc, root = io.parse_location(table.location(), io.properties)  # type: ignore[attr-defined]
    fs = fs_by_scheme(scheme, netloc)
    referenced = referenced_paths(table)
    cutoff = now_s - policy.orphan_min_age_s
    for info in _listing(fs, root):
        if info.path in referenced or info.mtime is None or info.mtime.timestamp() > cutoff:
            continue
        out.orphans += 1
        out.orphan_bytes += info.size or 0
        if not dry_run:
            fs.delete_file(info.path)


def _listing(fs: pa.fs.FileSystem, root: str) -> Iterable[pa.fs.FileInfo]:
    for sub in ("data", "metadata"):
        infos = fs.get_file_info(FileSelector(f"{root.rstrip('/')}/{sub}", allow_not_found=True, recursive=True))
        yield from (info for info in infos if info.type == FileType.File)
