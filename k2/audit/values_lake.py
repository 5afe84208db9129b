"""The lake's rows of one source topic, bucketed on local disk by (partition, block of offsets).

Kafka is read partition by partition in offset order; the lake is laid out by day and
sorted by exchange time (a compacted day holds every partition's offsets in one file), so no
scan filter fetches "partition 3, offsets 100,000 to 149,999" without reading the whole day.
So each table is read once, batch by batch (pyiceberg's batch reader: one file at a time),
and its rows are written to Arrow IPC files under ``root/<table>/<partition>/<block>/`` by
pyarrow's dataset writer; the audit then reads one bucket at a time beside the same span of
Kafka. Memory stays at a batch and a bucket whatever the lake's size; the disk holds a
compressed copy of the rows audited (with ``--sample``, of the sampled blocks only).

Rows below their partition's log start are not spilled: Kafka no longer holds their source
(retention, or compaction of the reference topic). They are counted per partition
(:class:`Unsourced`), and so are rows of a partition Kafka does not have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.table import DataScan, Table

from k2.audit.values_sample import Selection
from k2.lake.schemas import SourcePosition

__all__ = ["LakeSpill", "Unsourced", "file_by_file"]

_FORMAT = ds.IpcFileFormat()
_WRITE = _FORMAT.make_write_options(compression="lz4")
_BUCKET = pa.schema([("__p", pa.int32()), ("__b", pa.int64())])
_MAX_OPEN_FILES = 256
_KEY_SHIFT = 40
_KEY_MASK = (1 << _KEY_SHIFT) - 1


@dataclass
class Unsourced:
    """Rows of one table and partition whose source Kafka no longer (or never) held: how many, lowest, highest."""

    rows: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, offsets: np.ndarray) -> None:
        if not len(offsets):
            return
        self.rows += len(offsets)
        low, high = int(offsets.min()), int(offsets.max())
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)


@dataclass
class LakeSpill:
    """Rows of the tables fed by one topic, in buckets of ``selection.block`` offsets per partition."""

    root: Path
    selection: Selection
    buckets: set[tuple[int, int]] = field(default_factory=set)
    """(partition, block) of every bucket any table wrote."""
    below_start: dict[tuple[str, int], Unsourced] = field(default_factory=dict)
    """(table, partition) -> rows below the partition's log start, or of a partition Kafka does not know."""
    snapshots: dict[str, int | None] = field(default_factory=dict)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)

    def add(self, name: str, table: Table, position: SourcePosition, topic: str) -> None:
        """Spill ``table``'s current snapshot (its rows of ``topic``, for a table recording one per row)."""
        snapshot = table.metadata.current_snapshot()
        self.snapshots[name] = None if snapshot is None else snapshot.snapshot_id
        if snapshot is None:
            return
        row_filter: BooleanExpression = AlwaysTrue()
        if position.topic_column is not None:
            row_filter = EqualTo(term=position.topic_column, value=topic)
        # The table's current snapshot in its current schema, as a reader sees it (a snapshot_id would read
        # the schema the snapshot was written with: a column dropped since would still show).
        reader = file_by_file(table.scan(row_filter=row_filter))
        self.schemas[name] = reader.schema
        batches = self._bucketed(name, reader, position)
        out = pa.RecordBatchReader.from_batches(
            reader.schema.append(_BUCKET.field(0)).append(_BUCKET.field(1)), batches
        )
        ds.write_dataset(
            out,
            self.root / _safe(name),
            format=_FORMAT,
            file_options=_WRITE,
            partitioning=ds.partitioning(_BUCKET),
            max_open_files=_MAX_OPEN_FILES,
            existing_data_behavior="error",
        )

    def _bucketed(self, name: str, reader: pa.RecordBatchReader, position: SourcePosition) -> Iterator[pa.RecordBatch]:
        """The batches' rows in the selected blocks, with their bucket columns; counting the rows Kafka lost."""
        for batch in reader:
            if not batch.num_rows:
                continue
            partitions = batch.column(position.partition_column).to_numpy().astype(np.int64)
            offsets = batch.column(position.offset_column).to_numpy().astype(np.int64)
            keep, gone = self.selection.keep(partitions, offsets)
            for p in np.unique(partitions[gone]).tolist():
                self.below_start.setdefault((name, p), Unsourced()).add(offsets[gone & (partitions == p)])
            if not keep.any():
                continue
            kept = batch.filter(pa.array(keep)) if not keep.all() else batch
            parts, blocks = partitions[keep], offsets[keep] // self.selection.block
            self.buckets.update(_pairs(parts, blocks))
            yield kept.append_column("__p", pa.array(parts.astype(np.int32))).append_column("__b", pa.array(blocks))

    def read(self, name: str, partition: int, block: int) -> pa.Table | None:
        """The rows of ``name`` in one bucket, in no particular order (None: the table has none there)."""
        folder = self.root / _safe(name) / str(partition) / str(block)
        if not folder.is_dir():
            return None
        data = ds.dataset(folder, format=_FORMAT, schema=self.schemas[name]).to_table()
        return data if data.num_rows else None


def file_by_file(scan: DataScan) -> pa.RecordBatchReader:
    """``scan``'s rows one data file at a time, in its projected schema.

    pyiceberg's own ``to_arrow_batch_reader`` (0.12) hands every file to its thread pool at
    once and keeps each file's batches until they are taken: behind a slower consumer it
    holds the whole table. Here the next file is read only once the last one is taken.
    """
    projection = scan.projection()
    target = schema_to_pyarrow(projection)
    reader = ArrowScan(scan.table_metadata, scan.io, projection, scan.row_filter, scan.case_sensitive)
    batches = (batch for task in scan.plan_files() for batch in reader.to_record_batches([task]))
    return pa.RecordBatchReader.from_batches(target, batches).cast(target)


def _pairs(parts: np.ndarray, blocks: np.ndarray) -> set[tuple[int, int]]:
    """The distinct (partition, block) pairs (one 1-D unique of packed keys: a 2-D unique sorts rows)."""
    keys = np.unique((parts << _KEY_SHIFT) | blocks)
    return set(zip((keys >> _KEY_SHIFT).tolist(), (keys & _KEY_MASK).tolist(), strict=True))


def _safe(name: str) -> str:
    return name.replace("/", "_")
