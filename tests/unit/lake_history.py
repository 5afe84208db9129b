"""How a reader that follows an Iceberg table sees it: time travel to each snapshot, and an incremental read.

Java's readers are emulated from the metadata: an incremental append scan (Spark's
``start-snapshot-id``/``end-snapshot-id``, Structured Streaming, Flink's incremental source)
reads only the files that *append* snapshots added between two snapshots and skips ``replace``
snapshots; Structured Streaming stops at a ``delete`` or ``overwrite`` snapshot.
"""

from __future__ import annotations

from collections import Counter

from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation, Snapshot, ancestors_of

POSITION = ("kafka_partition", "kafka_offset")


def history(table: Table) -> list[Snapshot]:
    """The current snapshot's ancestors, oldest first."""
    metadata = table.metadata
    return list(reversed(list(ancestors_of(metadata.current_snapshot(), metadata))))


def rows_at(table: Table, snapshot_id: int, columns: tuple[str, ...] = POSITION) -> Counter[tuple[int, ...]]:
    """Time travel: the rows (their ``columns``) the table holds at ``snapshot_id``, with multiplicity."""
    arrow = table.scan(snapshot_id=snapshot_id, selected_fields=columns).to_arrow()
    return Counter(zip(*(arrow[c].to_pylist() for c in columns), strict=True))


def appended_files(table: Table, after_id: int, until_id: int) -> list[DataFile]:
    """The data files an incremental append scan reads: added by append snapshots in (after_id, until_id]."""
    files: list[DataFile] = []
    for snapshot in history(table):
        if snapshot.snapshot_id == after_id:
            files = []  # only what comes after the start
            continue
        if snapshot.summary is not None and snapshot.summary.operation == Operation.APPEND:
            for manifest in snapshot.manifests(table.io):
                if manifest.added_snapshot_id != snapshot.snapshot_id:
                    continue
                files.extend(
                    entry.data_file
                    for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                    if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id
                )
        if snapshot.snapshot_id == until_id:
            break
    return files


def rows_in(table: Table, files: list[DataFile], columns: tuple[str, ...] = POSITION) -> Counter[tuple[int, ...]]:
    """The rows (their ``columns``) of exactly these data files, with multiplicity."""
    schema = table.schema().select(*columns)
    arrow = ArrowScan(table.metadata, table.io, schema, row_filter=AlwaysTrue()).to_table(
        [FileScanTask(f) for f in files]
    )
    return Counter(zip(*(arrow[c].to_pylist() for c in columns), strict=True))


def incremental_read(table: Table, after_id: int, until_id: int) -> Counter[tuple[int, ...]]:
    """What a reader that had read the table at ``after_id`` receives by following it to ``until_id``."""
    return rows_at(table, after_id) + rows_in(table, appended_files(table, after_id, until_id))


def history_problems(table: Table) -> list[str]:
    """Every way the table's history misleads a reader that follows it (empty: none).

    Each snapshot holds every row once; an append only adds rows; a replace holds exactly its
    parent's rows; nothing else (delete, overwrite) appears; and reading incrementally from the
    first snapshot to any later one gives exactly the rows of the later one.
    """
    problems: list[str] = []
    snapshots = history(table)
    previous: Counter[tuple[int, ...]] | None = None  # the parent of the oldest snapshot left is unknown
    for snapshot in snapshots:
        assert snapshot.summary is not None
        operation = snapshot.summary.operation
        rows = rows_at(table, snapshot.snapshot_id)
        doubled = sum(n - 1 for n in rows.values() if n > 1)
        missing = 0 if previous is None else sum((previous - rows).values())
        label = f"snapshot {snapshot.snapshot_id} ({operation.value})"
        if doubled:
            problems.append(f"{label}: {doubled} row(s) twice")
        if missing:
            problems.append(f"{label}: {missing} row(s) of its parent missing")
        if operation == Operation.REPLACE and previous is not None and rows != previous:
            problems.append(f"{label}: rows differ from its parent's")
        if operation not in (Operation.APPEND, Operation.REPLACE):
            problems.append(f"{label}: a reader following the table stops or re-reads here")
        if snapshots and snapshot is not snapshots[0]:
            followed = incremental_read(table, snapshots[0].snapshot_id, snapshot.snapshot_id)
            if followed != rows:
                extra, lost = sum((followed - rows).values()), sum((rows - followed).values())
                problems.append(f"{label}: an incremental read from the first snapshot gets {extra} extra, {lost} lost")
        previous = rows
    return problems
