"""Two Iceberg readers side by side: where their Arrow tables disagree, said as one line each (pure).

Types are compared after forgetting only what is representation, not value: large and
small string/binary/list layouts, field metadata, and the spelling of UTC (``UTC`` or
``+00:00``). A decimal's precision and scale, a timestamp's unit and whether it is an
instant, nullability and column order are compared as they are. Values are compared
exactly (Arrow equality: decimals as unscaled integers at their scale, instants as
microseconds since the epoch, bytes as bytes, nulls as nulls) after both tables are put
in the same row order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tests.faults.ranges import format_ranges, ranges

__all__ = [
    "POSITION",
    "diff_files",
    "diff_history",
    "diff_rows",
    "diff_snapshots",
    "exactly_once",
    "normal_schema",
    "normal_type",
    "plain",
    "summary_keys",
]

POSITION = ("kafka_partition", "kafka_offset")
"""A row's Kafka position: what a follower of a K2 table must deliver exactly once."""
_UTC = {"UTC", "+00:00", "Etc/UTC", "Z"}
_SHOWN = 3  # differing rows quoted per column


def normal_type(t: pa.DataType) -> pa.DataType:
    """``t`` with large layouts made small and UTC spelled one way, recursively; everything else kept."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_timestamp(t) and t.tz is not None and t.tz in _UTC:
        return pa.timestamp(t.unit, tz="UTC")
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(_normal_field(t.value_field).with_name("element"))
    if pa.types.is_map(t):
        return pa.map_(normal_type(t.key_type), _normal_field(t.item_field))
    if pa.types.is_struct(t):
        return pa.struct([_normal_field(t.field(i)) for i in range(t.num_fields)])
    return t


def _normal_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, normal_type(f.type), nullable=f.nullable)


def normal_schema(schema: pa.Schema) -> pa.Schema:
    """Names, nullability and :func:`normal_type` of every column, in order, without metadata."""
    return pa.schema([_normal_field(f) for f in schema])


def _show(f: pa.Field) -> str:
    return f"{f.name}: {f.type}{'' if f.nullable else ' not null'}"


def _sortable(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_null(t))


def _in_order(table: pa.Table) -> pa.Table:
    keys = [(f.name, "ascending") for f in table.schema if _sortable(f.type)]
    return table.sort_by(keys) if keys else table


def _key_of(table: pa.Table, row: int, key: Sequence[str]) -> str:
    return ", ".join(f"{k}={table.column(k)[row].as_py()!r}" for k in key if k in table.column_names)


def diff_rows(
    name: str,
    expected: pa.Table,
    actual: pa.Table,
    key: Sequence[str] = (),
    labels: tuple[str, str] = ("pyiceberg", "spark"),
) -> list[str]:
    """Where ``actual`` does not hold exactly the rows and values of ``expected``; empty when it does.

    Rows are matched by sorting both on every flat column; ``key`` names the columns quoted
    to say which row differs (a table's Kafka position, say).
    """
    ours, theirs = labels
    want, got = normal_schema(expected.schema), normal_schema(actual.schema)
    if want != got:
        lines = [f"{name}: the schemas differ"]
        for i in range(max(len(want), len(got))):
            a = _show(want.field(i)) if i < len(want) else "-"
            b = _show(got.field(i)) if i < len(got) else "-"
            if a != b:
                lines.append(f"  column {i}: {ours} {a} | {theirs} {b}")
        return lines
    if expected.num_rows != actual.num_rows:
        return [f"{name}: {ours} reads {expected.num_rows:,} rows, {theirs} {actual.num_rows:,}"]
    left = _in_order(expected.cast(want))
    right = _in_order(actual.cast(want))
    problems: list[str] = []
    for column in want.names:
        a, b = left.column(column), right.column(column)
        if a.equals(b):
            continue
        rows = _differing_rows(a, b)
        shown = "; ".join(
            f"[{_key_of(left, i, key) or f'row {i}'}] {ours} {a[i].as_py()!r} | {theirs} {b[i].as_py()!r}"
            for i in rows[:_SHOWN]
        )
        problems.append(f"{name}.{column}: {len(rows):,} of {left.num_rows:,} rows differ: {shown}")
    return problems


def _differing_rows(a: pa.ChunkedArray, b: pa.ChunkedArray) -> list[int]:
    if _sortable(a.type):
        same = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        return pc.indices_nonzero(pc.invert(pc.or_(same, both_null))).to_pylist()
    return [i for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)) if x != y]


def plain(value: Any) -> Any:
    """A metadata cell as comparable Python: Arrow maps (lists of pairs) as dicts, recursively.

    A struct without fields (an unpartitioned table's ``partition``) is None, as for a reader
    that leaves the column out (Spark does).
    """
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: plain(v) for k, v in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()} or None
    return value


def _instants_in_utc(table: pa.Table) -> pa.Table:
    """Timestamps as UTC microseconds: pyiceberg's metadata tables have them zoneless in ms, Spark's in UTC."""
    schema = pa.schema(
        f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f for f in table.schema
    )
    return table.cast(schema)


def _by(table: pa.Table, key: str, columns: Sequence[str]) -> dict[Any, dict[str, Any]]:
    """Rows by ``key``, each as ``{column: plain value}``; a column the table lacks reads None."""
    wanted = [c for c in columns if c in table.column_names]
    rows = _instants_in_utc(table.select([key, *wanted])).to_pylist()
    return {row[key]: {c: plain(row.get(c)) for c in columns} for row in rows}


def _diff_keyed(
    name: str, expected: pa.Table, actual: pa.Table, key: str, columns: Sequence[str], labels: tuple[str, str]
) -> list[str]:
    ours, theirs = labels
    absent = [c for c in columns if c not in expected.column_names and c not in actual.column_names]
    if key not in expected.column_names or key not in actual.column_names or absent:
        return [f"{name}: {key} must be in both readers' tables, and each of {absent} in one at least"]
    want, got = _by(expected, key, columns), _by(actual, key, columns)
    problems = []
    if want.keys() != got.keys():
        problems.append(
            f"{name}: {key}s only in {ours}: {sorted(want.keys() - got.keys())[:_SHOWN]}, "
            f"only in {theirs}: {sorted(got.keys() - want.keys())[:_SHOWN]}"
        )
    for k in sorted(want.keys() & got.keys()):
        for column in columns:
            if want[k][column] != got[k][column]:
                problems.append(f"{name} {key}={k} {column}: {ours} {want[k][column]!r} | {theirs} {got[k][column]!r}")
    return problems


SNAPSHOT_COLUMNS = ("committed_at", "parent_id", "operation", "manifest_list", "summary")
HISTORY_COLUMNS = ("made_current_at", "parent_id", "is_current_ancestor")
FILE_COLUMNS = (
    "content",
    "file_format",
    "spec_id",
    "partition",
    "record_count",
    "file_size_in_bytes",
    "column_sizes",
    "value_counts",
    "null_value_counts",
    "nan_value_counts",
    "lower_bounds",
    "upper_bounds",
    "key_metadata",
    "split_offsets",
    "equality_ids",
    "sort_order_id",
)


def diff_snapshots(
    name: str, expected: pa.Table, actual: pa.Table, labels: tuple[str, str] = ("pyiceberg", "spark")
) -> list[str]:
    """The ``snapshots`` metadata table of two readers: ids, parents, operations, manifest lists, summaries."""
    return _diff_keyed(f"{name}.snapshots", expected, actual, "snapshot_id", SNAPSHOT_COLUMNS, labels)


def diff_history(
    name: str, expected: pa.Table, actual: pa.Table, labels: tuple[str, str] = ("pyiceberg", "spark")
) -> list[str]:
    """The ``history`` metadata table of two readers."""
    return _diff_keyed(f"{name}.history", expected, actual, "snapshot_id", HISTORY_COLUMNS, labels)


def diff_files(
    name: str, expected: pa.Table, actual: pa.Table, labels: tuple[str, str] = ("pyiceberg", "spark")
) -> list[str]:
    """The ``files`` metadata table of two readers, file by file: counts, sizes, partition, column statistics."""
    return _diff_keyed(f"{name}.files", expected, actual, "file_path", FILE_COLUMNS, labels)


def summary_keys(snapshots: pa.Table, prefix: str) -> Mapping[int, list[str]]:
    """Per snapshot id, the summary keys starting with ``prefix`` (``k2.offsets.`` for K2's marks)."""
    return {
        row["snapshot_id"]: sorted(k for k in plain(row["summary"]) if k.startswith(prefix))
        for row in snapshots.select(["snapshot_id", "summary"]).to_pylist()
    }


def exactly_once(name: str, delivered: pa.Table, expected: pa.Table, *, more_allowed: bool = False) -> list[str]:
    """Where ``delivered`` positions are not exactly ``expected`` ones, each once: doubled, missing, foreign.

    ``more_allowed``: positions beyond ``expected`` are no fault (a later snapshot holds later rows).
    """
    counts = delivered.group_by(list(POSITION)).aggregate([([], "count_all")]).to_pylist()
    doubled = [(r["kafka_partition"], r["kafka_offset"]) for r in counts if r["count_all"] > 1]
    got = {(r["kafka_partition"], r["kafka_offset"]) for r in counts}
    want = set(zip(*(expected.column(c).to_pylist() for c in POSITION), strict=True))
    problems = []
    for what, positions in (
        ("delivered more than once", doubled),
        ("missing", want - got),
        ("delivered but not expected", set() if more_allowed else got - want),
    ):
        if positions:
            by_partition: dict[str, list[int]] = {}
            for partition, offset in positions:
                by_partition.setdefault(f"partition {partition}", []).append(offset)
            runs = {p: ranges(offsets) for p, offsets in sorted(by_partition.items())}
            problems.append(f"{name}: {len(positions):,} rows {what}, at offsets {format_ranges(runs)}")
    return problems
