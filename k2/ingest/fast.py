"""The batch path of classification: a whole batch decoded and checked in columns, proved or left alone.

:func:`~k2.ingest.classify.classify` is K2's definition of what a record becomes: one
fastavro read, the domain rules and the row conversion, record by record. It is also
what costs a worker most of its time. This module takes the records it can *prove* it
would accept and builds their rows in columns; every other record goes to ``classify``,
which decides it (reject or accept) exactly as before. So nothing here decides a reject,
and for every record it accepts it produces the row ``classify`` and the row conversion
would have produced:

* **decode**: records of a flat writer schema are read by :class:`~k2.avro.batch.BatchDecoder`,
  which keeps only the records it proves read exactly as the codec reads them;
* **rules**: the source's :data:`RowRules` are *sufficient* conditions for its validator
  (a symbol of plain printable ASCII, say, rather than every string ``isprintable`` takes),
  so a row they pass is a row the validator passes;
* **rows**: each table column is built from its decoded column only by conversions the
  row conversion makes the same way (int64 to int32 when it fits, epoch milliseconds to
  microseconds); a table column that would need anything else sends the batch to ``classify``.

``tests/unit/test_fuzz.py`` holds both paths to this: a mutated batch must give the same
rows and the same rejects through either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.avro.batch import MIN_BATCH, BatchDecoder
from k2.avro.codec import HEADER_SIZE
from k2.ingest.frames import Frames
from k2.lake.schemas import SourcePosition

__all__ = [
    "MAX_BATCH_FRAME",
    "MIN_PROVED_BATCH",
    "DecoderCache",
    "FastRows",
    "RowRules",
    "fast_rows",
    "in_log_order",
    "table_rows",
]

#: ``(decoded columns, now_ms) -> (rows certainly valid, how many of those are flagged)``, or None
#: when the columns are not what the rules read (a writer schema of another shape): the whole
#: batch then goes record by record.
RowRules = Callable[[pa.Table, int], tuple[np.ndarray, int] | None]

MAX_BATCH_FRAME = 64 * 1024
"""Larger frames go record by record (the codec guards huge decimals and strings its own way)."""

MIN_PROVED_BATCH = 160
"""A batch of fewer records goes record by record: the batch path's fixed cost (a dozen polars and
Arrow calls, each column checked and built) is more than ``classify`` spends on that many records.
``bench/classify_bench.py``: at 32 trades a batch the batch path took 3.5 times as long as the
per-record one, at 128 1.25 times, at 160 0.9 times; at 5,000, a twelfth. A live rate fetches
tens of records per partition, so a fetch's partitions of a topic are classified joined
(:meth:`~k2.ingest.frames.Frames.join`)."""

_MAX_MILLIS = (2**63 - 1) // 1000


class DecoderCache:
    """A :class:`BatchDecoder` per writer schema id, or None for a schema that is not flat (ids never change)."""

    def __init__(self) -> None:
        self._decoders: dict[int, BatchDecoder | None] = {}

    def get(self, schema_id: int, writer: object) -> BatchDecoder | None:
        if schema_id not in self._decoders:
            schema_str = getattr(writer, "schema_str", None)
            self._decoders[schema_id] = BatchDecoder.for_schema(schema_str) if isinstance(schema_str, str) else None
        return self._decoders[schema_id]


@dataclass
class FastRows:
    """What the batch path proved, and what it leaves to :func:`~k2.ingest.classify.classify`."""

    rows: pa.Table | None = None
    """Accepted rows in the table's schema, in (partition, offset) order (None: none)."""
    slow: list[int] = field(default_factory=list)
    """Indices of the frames to classify one by one (ascending)."""
    flagged: int = 0
    schema_ids: set[int] = field(default_factory=set)
    """Writer schema ids of the accepted rows."""


def fast_rows(
    frames: Frames,
    resolved: Mapping[int, object],
    decoders: DecoderCache,
    rules: RowRules | None,
    schema: pa.Schema,
    position: SourcePosition,
    now_ms: int,
) -> FastRows:
    """Split a batch into proved rows and frames for the per-record path (see the module docstring)."""
    out = FastRows()
    if rules is None or len(frames) < MIN_PROVED_BATCH:
        out.slow = list(range(len(frames)))
        return out
    # A frame the batch cannot prove at a glance (a tombstone, no header, a high-bit id, a huge
    # one) goes to the per-record path, which rejects it with the reason.
    headers = frames.framing
    candidate = headers.framed & (headers.sizes > HEADER_SIZE) & (headers.sizes <= MAX_BATCH_FRAME)
    out.slow.extend(np.flatnonzero(~candidate).tolist())
    parts: list[pa.Table] = []
    for schema_id in np.unique(headers.schema_ids[candidate]).tolist():
        index = np.flatnonzero(candidate & (headers.schema_ids == schema_id))
        writer = resolved.get(schema_id)
        decoder = decoders.get(schema_id, writer) if writer is not None and len(index) >= MIN_BATCH else None
        if decoder is None:
            out.slow.extend(index.tolist())
            continue
        values = frames.values
        decoded = decoder.decode([cast(bytes, values[i]) for i in index.tolist()])  # None went to the slow path
        out.slow.extend(index[decoded.rest].tolist())
        proved = index[decoded.rows]
        checked = rules(decoded.table, now_ms) if decoded.table.num_rows else None
        if checked is None:
            out.slow.extend(proved.tolist())
            continue
        ok, flagged = checked
        offsets = np.asarray(frames.offsets, dtype=np.int64)[proved]
        built = table_rows(decoded.table, frames.partition_array()[proved], offsets, schema, position)
        if built is None:
            out.slow.extend(proved.tolist())
            continue
        rows, fits = built
        keep = ok & fits
        out.slow.extend(proved[~keep].tolist())
        if keep.any():
            parts.append(rows.filter(pa.array(keep)) if not keep.all() else rows)
            out.schema_ids.add(schema_id)
            out.flagged += flagged if keep.all() else _flagged_kept(rules, decoded.table, keep, now_ms)
    out.slow.sort()
    if parts:
        out.rows = in_log_order(pa.concat_tables(parts), position) if len(parts) > 1 else parts[0]
    return out


def in_log_order(rows: pa.Table, position: SourcePosition) -> pa.Table:
    """``rows`` by (partition, offset): the order of frames (joined ones too), and of a batch's chunks."""
    keys = [(position.partition_column, "ascending"), (position.offset_column, "ascending")]
    return rows.take(pc.sort_indices(rows, sort_keys=keys))


def _flagged_kept(rules: RowRules, decoded: pa.Table, keep: np.ndarray, now_ms: int) -> int:
    """Flagged rows among those kept (when some rows the rules passed do not fit the table)."""
    checked = rules(decoded.filter(pa.array(keep)), now_ms)
    return 0 if checked is None else checked[1]


def table_rows(
    decoded: pa.Table, partitions: np.ndarray, offsets: np.ndarray, schema: pa.Schema, position: SourcePosition
) -> tuple[pa.Table, np.ndarray] | None:
    """Decoded columns as rows of the table (``schema``), and which rows fit it; None when a column cannot be built.

    Mirrors :func:`~k2.lake.arrow.column_to_arrow` for the column types the batch decoder
    produces; a required column with a null, or a value outside its column's range, marks
    its row as not fitting (the per-record path rejects it with the reason).
    """
    n = decoded.num_rows
    fits = np.ones(n, dtype=bool)
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for f in schema:
        if f.name == position.partition_column:
            arrays.append(pa.array(partitions).cast(f.type))
            continue
        if f.name == position.offset_column:
            arrays.append(pa.array(offsets).cast(f.type))
            continue
        if f.name not in decoded.column_names:
            if not f.nullable:
                return None
            arrays.append(pa.nulls(n, f.type))
            continue
        built = _column(decoded.column(f.name), f.type)
        if built is None:
            return None
        array, in_range = built
        fits &= in_range
        if not f.nullable and array.null_count:
            fits &= array.is_valid().to_numpy(zero_copy_only=False)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema), fits


def _column(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray] | None:
    """A decoded column as ``target`` (null where a value does not fit), and which values fit; None: unsupported."""
    source = column.type
    everything = np.ones(len(column), dtype=bool)
    if source == target:
        return column, everything
    if pa.types.is_int64(source) and (pa.types.is_int32(target) or pa.types.is_timestamp(target)):
        if pa.types.is_int32(target):
            low, high = -(2**31), 2**31 - 1
        else:
            low, high = -_MAX_MILLIS, _MAX_MILLIS
        in_range = pc.fill_null(pc.and_(pc.greater_equal(column, low), pc.less_equal(column, high)), True)
        safe = pc.if_else(in_range, column, pa.scalar(None, pa.int64()))
        if pa.types.is_int32(target):
            return safe.cast(target), in_range.to_numpy()
        return pc.multiply_checked(safe, 1000).cast(target), in_range.to_numpy()
    if pa.types.is_float32(source) and pa.types.is_float64(target):
        return column.cast(target), everything
    return None
