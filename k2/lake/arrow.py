"""Buffered events to Arrow tables that match K2's Iceberg schemas exactly. Pure, no I/O.

The Arrow schema is derived from the Iceberg schema by pyiceberg itself
(``schema_to_pyarrow``), so types and nullability cannot drift: decimals are
``decimal128(18, 6)``, instants ``timestamp('us', tz='UTC')``, strings and binaries
the ``large_`` kinds pyiceberg reads back. Required columns are ``not null``, which is
what ``Table.append`` demands of a required Iceberg field.

Columns are built one at a time from plain Python lists (one list comprehension per
column, one ``pa.array`` call, then vectorised compute), never a pyarrow object per row.
Rows are sorted by the table's declared sort order, nulls last, then by Kafka position
so equal keys keep a deterministic order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table.sorting import NullOrder, SortDirection

from k2.errors import one_line
from k2.lake.records import BufferedEvent, GapRecord, RejectRecord
from k2.lake.schemas import COMPANIES, REJECTS, SEQUENCE_GAPS, TABLES, TableDef

__all__ = [
    "arrow_schema",
    "column_to_arrow",
    "companies_to_arrow",
    "events_to_arrow",
    "gaps_to_arrow",
    "keep_last",
    "rejects_to_arrow",
    "rows_to_arrow",
    "sort_for_table",
]

E = TypeVar("E")

#: What a build raises for rows it cannot represent (column_to_arrow's ValueError, Arrow's own
#: errors, a wrong Python type); anything else is a bug and propagates.
_BUILD_ERRORS = (ValueError, TypeError, ArithmeticError, pa.ArrowException)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_EPOCH_DATE = date(1970, 1, 1)


@cache
def arrow_schema(table_name: str) -> pa.Schema:
    """The Arrow schema of a K2 table as K2 defines it (before any evolution)."""
    return schema_to_pyarrow(TABLES[table_name].schema, include_field_ids=False)


SMALL_BATCH_ROWS = 256
"""Rows below which a step of a batch works in Python rather than through Arrow's kernels: a kernel call
(``group_by`` about 140 us, ``dictionary_encode``, ``fill_null``) costs more than a loop over a live
batch's few dozen rows. Used by sequence tracking, its fingerprints and the reference-data check."""


def _epoch_us(value: Any) -> int | None:
    """Microseconds since the epoch of an epoch-millis int or an aware datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: K2 stores instants, give an aware (UTC) datetime")
        return (value - _EPOCH) // _ONE_US
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000
    raise TypeError(f"expected epoch milliseconds (int) or an aware datetime, got {type(value).__name__}")


def _to_date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH_DATE + timedelta(days=value)  # Avro ``date``: days since the epoch
    raise TypeError(f"expected an ISO date string, a date or epoch days, got {type(value).__name__}")


def _timestamp_array(values: list[Any], type_: pa.DataType) -> pa.Array:
    # Fast path: all epoch-millisecond ints (what the codec gives), converted in C.
    try:
        millis = pa.array(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_epoch_us(v) for v in values], pa.int64()).cast(type_)
    return pc.multiply_checked(millis, 1000).cast(type_)


def column_to_arrow(values: list[Any], field: pa.Field) -> pa.Array:
    """One column of Python values (as fastavro decodes them) as an Arrow array of ``field``'s type.

    Raises:
        ValueError: a required (``not null``) column holds a null, or a value does not fit the type.
    """
    type_ = field.type
    try:
        if pa.types.is_timestamp(type_):
            array = _timestamp_array(values, type_)
        elif pa.types.is_date32(type_):
            array = pa.array([_to_date(v) for v in values], type_)
        else:
            array = pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise ValueError(f"column {field.name}: {exc}") from exc
    if not field.nullable and array.null_count:
        raise ValueError(f"column {field.name} is required but {array.null_count} row(s) have no value")
    return array


def sort_for_table(batch: pa.Table, table_def: TableDef) -> pa.Table:
    """``batch`` in the table's declared sort order (nulls as declared), then by Kafka position."""
    keys: list[tuple[str, str, str]] = []
    for sort_field in table_def.sort_order.fields:
        name = table_def.schema.find_column_name(sort_field.source_id)
        if name is None or name not in batch.column_names:
            continue
        order = "ascending" if sort_field.direction == SortDirection.ASC else "descending"
        nulls = "at_end" if sort_field.null_order == NullOrder.NULLS_LAST else "at_start"
        keys.append((name, order, nulls))
    if not keys:
        return batch
    pos = table_def.position
    for name in (pos.topic_column, pos.partition_column, pos.offset_column):
        if name is not None and all(k[0] != name for k in keys):
            keys.append((name, "ascending", "at_end"))
    return batch.take(pc.sort_indices(batch, sort_keys=keys))


def _build(
    table_name: str,
    column: Callable[[str], list[Any]],
    schema: pa.Schema | None,
    sort: bool = True,
) -> pa.Table:
    schema = arrow_schema(table_name) if schema is None else schema
    arrays = [column_to_arrow(column(f.name), f) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return sort_for_table(table, TABLES[table_name]) if sort else table


def events_to_arrow(
    table_name: str, events: Sequence[BufferedEvent], schema: pa.Schema | None = None, *, sort: bool = True
) -> pa.Table:
    """Decoded events of one table (trades or quotes) as an Arrow table with lineage columns.

    Args:
        table_name: a key of :data:`k2.lake.schemas.TABLES` fed by one topic.
        events: the buffered events; ``record`` keys missing from a dict read as null.
        schema: the table's current Arrow schema when it has evolved past K2's definition
            (see ``IcebergWriter.arrow_schema``); defaults to :func:`arrow_schema`.
        sort: in the table's sort order (True), or in the events' order (the worker's chunks:
            the flush sorts what it commits).

    Raises:
        ValueError: a required value is missing or a value does not fit its column.
    """
    position = TABLES[table_name].position
    records = [e.record for e in events]

    def column(name: str) -> list[Any]:
        if name == position.partition_column:
            return [e.partition for e in events]
        if name == position.offset_column:
            return [e.offset for e in events]
        return [r.get(name) for r in records]

    return _build(table_name, column, schema, sort)


def companies_to_arrow(
    events: Sequence[BufferedEvent], updated_at: int | datetime, schema: pa.Schema | None = None, *, sort: bool = True
) -> pa.Table:
    """Reference-data events as rows of ``reference_data.companies``.

    ISO ``start_date``/``end_date`` strings become dates; every row gets ``updated_at``
    (epoch millis or aware datetime: when K2 lands it). Not de-duplicated here: the
    writer keeps the last row per ``company_id`` (:func:`keep_last`) before its upsert.
    """
    updated = [updated_at] * len(events)

    def column(name: str) -> list[Any]:
        if name == "updated_at":
            return updated
        if name == "kafka_partition":
            return [e.partition for e in events]
        if name == "kafka_offset":
            return [e.offset for e in events]
        return [e.record.get(name) for e in events]

    return _build(COMPANIES, column, schema, sort)


_SOURCE_NAMES = {"source_topic": "topic", "source_partition": "partition", "source_offset": "offset"}


def _tuples_to_arrow(
    table_name: str, fields: tuple[str, ...], rows: Sequence[tuple[Any, ...]], schema: pa.Schema | None
) -> pa.Table:
    """Named tuples with ``fields`` as rows of ``table_name``; ``source_*`` columns read topic, partition, offset."""

    def column(name: str) -> list[Any]:
        attr = _SOURCE_NAMES.get(name, name)
        if attr not in fields:
            return [None] * len(rows)
        index = fields.index(attr)
        if attr == "headers":  # (key, value) pairs; none at all reads as null
            return [[{"key": k, "value": v} for k, v in r[index]] if r[index] else None for r in rows]
        return [r[index] for r in rows]

    return _build(table_name, column, schema)


def rejects_to_arrow(rejects: Sequence[RejectRecord], schema: pa.Schema | None = None) -> pa.Table:
    """Rejected records as rows of ``market_data.rejects``, raw key and value bytes kept."""
    return _tuples_to_arrow(REJECTS, RejectRecord._fields, rejects, schema)


def gaps_to_arrow(gaps: Sequence[GapRecord], schema: pa.Schema | None = None) -> pa.Table:
    """Sequence gaps as rows of ``market_data.sequence_gaps``."""
    return _tuples_to_arrow(SEQUENCE_GAPS, GapRecord._fields, gaps, schema)


def rows_to_arrow(
    build: Callable[[Sequence[E]], pa.Table], items: Sequence[E]
) -> tuple[pa.Table | None, list[tuple[E, str]]]:
    """``build(items)``, or, when some items cannot be represented, the table of those that can.

    Returns the table (None when no item converts) and ``(item, one-line reason)`` for each
    item that does not, in input order, so one unrepresentable row never sinks its batch:
    the caller turns those into rejects. A clean batch costs exactly one ``build``; a batch
    with k bad items about ``2 k log2(n)`` builds of shrinking halves (bisection), then one
    ``build`` of the survivors in their input order, so the table is what ``build`` makes
    of them (sorted, for the ``*_to_arrow`` functions) as if the bad items had never been there.
    """
    if not items:
        return None, []
    try:
        return build(items), []
    except _BUILD_ERRORS as exc:
        error = exc
    kept: list[tuple[Sequence[E], pa.Table]] = []
    failed: list[tuple[E, str]] = []
    _isolate(build, items, error, kept, failed)
    survivors = [item for part, _ in kept for item in part]
    if not survivors:
        return None, failed
    if len(kept) == 1:
        return kept[0][1], failed
    try:
        return build(survivors), failed
    except _BUILD_ERRORS:  # each part converts but not all together (never seen): keep the parts
        return pa.concat_tables([table for _, table in kept]), failed


def _isolate(
    build: Callable[[Sequence[E]], pa.Table],
    items: Sequence[E],
    error: Exception,
    kept: list[tuple[Sequence[E], pa.Table]],
    failed: list[tuple[E, str]],
) -> None:
    """Split ``items`` (which failed with ``error``) in halves until each part builds or is one item."""
    if len(items) == 1:
        failed.append((items[0], one_line(f"{type(error).__name__}: {error}")))
        return
    middle = len(items) // 2
    for part in (items[:middle], items[middle:]):
        try:
            kept.append((part, build(part)))
        except _BUILD_ERRORS as exc:
            _isolate(build, part, exc, kept, failed)


def keep_last(batch: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Only the last row (in batch order) of each distinct ``keys`` value, in batch order.

    Batch order is consumption order, which within a Kafka partition is offset order,
    so for a key that lives in one partition (Kafka keys do) the last row is the latest.
    """
    if batch.num_rows == 0:
        return batch
    index = "__k2_row"
    numbered = batch.append_column(index, pa.array(range(batch.num_rows), pa.int64()))
    last = numbered.group_by(list(keys), use_threads=False).aggregate([(index, "max")])[f"{index}_max"]
    return batch.take(last.sort())
