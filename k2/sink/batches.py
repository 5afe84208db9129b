"""Turn buffered chunks into one commit-ready Arrow batch per table. Pure.

Split from the I/O (Quix Streams' shape: a batch object that only collects, a writer
that only writes), so the rules that make exactly-once work are tested without a
catalog: rows of overlapping chunks (a batch consumed twice after a crash) are
de-duplicated by Kafka position, and the marks to record are the highest offsets the
chunks cover, per (topic, partition).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from k2.buffer.chunks import ChunkKey, from_ipc
from k2.errors import TableSchemaMismatch
from k2.lake.arrow import keep_last, sort_for_table
from k2.lake.records import TopicPartition
from k2.lake.schemas import TABLES

__all__ = [
    "PendingChunk",
    "TableBatch",
    "build_batch",
    "build_batch_from",
    "columns_missing",
    "combine_chunks",
    "overlaps",
    "source_offsets",
]


@dataclass(frozen=True)
class PendingChunk:
    """A chunk taken from a source topic's buffer for this flush."""

    topic: str
    key: ChunkKey
    blob: bytes


@dataclass(frozen=True)
class TableBatch:
    """Everything one table receives in one flush."""

    table_name: str
    chunks: tuple[PendingChunk, ...]

    @property
    def rows(self) -> int:
        return sum(c.key.rows for c in self.chunks)


def source_offsets(chunks: Sequence[PendingChunk]) -> dict[TopicPartition, int]:
    """The highest source offset each (topic, partition) reaches in ``chunks``."""
    out: dict[TopicPartition, int] = {}
    for c in chunks:
        tp = (c.topic, c.key.partition)
        if c.key.last_offset > out.get(tp, -1):
            out[tp] = c.key.last_offset
    return out


def overlaps(chunks: Sequence[PendingChunk]) -> bool:
    """Whether two chunks of the same (topic, partition) cover a common offset."""
    spans: dict[TopicPartition, list[tuple[int, int]]] = {}
    for c in chunks:
        spans.setdefault((c.topic, c.key.partition), []).append((c.key.first_offset, c.key.last_offset))
    for ranges in spans.values():
        ranges.sort()
        for (_, prev_last), (first, _) in itertools.pairwise(ranges):
            if first <= prev_last:
                return True
    return False


def build_batch(batch: TableBatch, schema: pa.Schema | None = None) -> pa.Table:
    """One Arrow table of the chunks' rows: schemas unified, duplicates dropped, sorted.

    Chunks written before a schema evolution lack the new columns; they are promoted
    (nulls) and, when ``schema`` (the table's current Arrow schema) is given, the result
    is cast to it so the append matches the table exactly.

    Raises:
        TableSchemaMismatch: a column holding values that ``schema`` lacks; it is never dropped
            (the flusher adds it to the table first: :meth:`~k2.lake.writer.IcebergWriter.ensure_arrow_columns`).
    """
    return build_batch_from(combine_chunks(batch), batch.table_name, schema)


def build_batch_from(rows: pa.Table, table_name: str, schema: pa.Schema | None = None) -> pa.Table:
    """``rows`` (see :func:`combine_chunks`) in ``schema`` (when given) and in the table's order."""
    if schema is not None:
        rows = _conform(rows, schema, table_name)
    return sort_for_table(rows, TABLES[table_name])


def combine_chunks(batch: TableBatch) -> pa.Table:
    """The chunks' rows in one Arrow table (schemas unified), rows of overlapping chunks once."""
    table_def = TABLES[batch.table_name]
    tables = [from_ipc(c.blob) for c in batch.chunks]
    combined = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    if overlaps(batch.chunks):
        pos = table_def.position
        keys = [k for k in (pos.topic_column, pos.partition_column, pos.offset_column) if k is not None]
        combined = keep_last(combined, keys)
    return combined


def columns_missing(rows: pa.Table, schema: pa.Schema) -> list[pa.Field]:
    """Fields of ``rows`` that ``schema`` lacks and that hold at least one value."""
    names = set(schema.names)
    return [f for f in rows.schema if f.name not in names and rows.column(f.name).null_count < rows.num_rows]


def _conform(table: pa.Table, schema: pa.Schema, table_name: str) -> pa.Table:
    """``table`` with ``schema``'s columns in its order; absent (new, optional) columns as nulls."""
    lost = columns_missing(table, schema)
    if lost:
        raise TableSchemaMismatch(
            f"{table_name} lacks column(s) {', '.join(f.name for f in lost)} that buffered rows hold values of: "
            "they are added to the table before a commit, never dropped"
        )
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
