"""Lake rows against their source records, column by column, in Arrow kernels. Pure.

Each function takes lake rows and what their source records say, already aligned row for
row (:func:`align`), and returns a :class:`Diff` per column that differs somewhere: the
offsets of the rows that differ and both values of each. Equality is exact: decimals by
value at full scale (never through a float), instants as microseconds since the epoch (a
``timestamptz`` and the source's UTC instant; a lake column without a time zone is read as
UTC, so an hour's shift shows), two nulls equal, NaN equal to NaN. Where the lake's type is
not the source's, the pairs K2 defines are compared by value (ints of either width,
decimals of any scale, ISO ``YYYY-MM-DD`` strings against a ``date`` column, ``string``
against ``large_string``); any other pair differs on every row where either side has a value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ABSENT",
    "Diff",
    "align",
    "comparable",
    "compare_columns",
    "differs",
]

ABSENT = "(no such column)"
"""What a :class:`Diff` shows as the lake's value when the table lacks the column."""

_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


@dataclass(frozen=True)
class Diff:
    """The rows where one column differs: their offsets, and both values of each (the lake's None: no column)."""

    column: str
    offsets: pa.Array
    lake: pa.Array | None
    source: pa.Array


def align(lake_offsets: pa.Array | pa.ChunkedArray, source_offsets: pa.Array) -> pa.Array:
    """For each lake offset, the index of the source record at that offset (null where there is none)."""
    return pc.index_in(lake_offsets, value_set=source_offsets)


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_decimal(type_):
        return "decimal"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return "binary"
    if pa.types.is_timestamp(type_):
        return "timestamp"
    if pa.types.is_floating(type_):
        return "float"
    return str(type_)


def _common_decimal(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    scale = max(a.scale, b.scale)
    digits = max(a.precision - a.scale, b.precision - b.scale) + scale
    return pa.decimal128(digits, scale) if digits <= 38 else pa.decimal256(min(digits, 76), scale)


def _iso_dates(strings: pa.Array) -> pa.Array:
    """``YYYY-MM-DD`` strings as dates; anything else (or an impossible date) as null."""
    shaped = pc.match_substring_regex(strings, _ISO_DATE)
    kept = pc.if_else(shaped, strings, pa.scalar(None, strings.type))
    parsed = pc.strptime(kept, format="%Y-%m-%d", unit="s", error_is_null=True)
    return parsed.cast(pa.date32())


def comparable(source: pa.Array, lake: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """``source`` and ``lake`` in one type whose equality is the values' equality, or None if none is defined."""
    s, t = source.type, lake.type
    if s == t:
        return source, lake
    ks, kt = _kind(s), _kind(t)
    if ks == kt == "int":
        return source.cast(pa.int64()), lake.cast(pa.int64())
    if ks == kt == "decimal":
        common = _common_decimal(s, t)
        return source.cast(common), lake.cast(common)
    if ks == kt == "string":
        return source.cast(pa.large_string()), lake.cast(pa.large_string())
    if ks == kt == "binary":
        return source.cast(pa.large_binary()), lake.cast(pa.large_binary())
    if ks == kt == "float":
        return source.cast(pa.float64()), lake.cast(pa.float64())
    if ks == kt == "timestamp":  # instants as integers since the epoch, in the finer unit of the two
        unit = "ns" if "ns" in (s.unit, t.unit) else "us"
        return source.cast(pa.timestamp(unit, s.tz)).cast(pa.int64()), lake.cast(pa.timestamp(unit, t.tz)).cast(
            pa.int64()
        )
    if ks == "string" and pa.types.is_date32(t):
        return _iso_dates(source), lake
    return None


def differs(source: pa.Array, lake: pa.Array) -> pa.Array:
    """Per row: whether the values differ (both null: equal; NaN and NaN: equal). Same type on both sides."""
    same = pc.fill_null(pc.equal(source, lake), False)
    same = pc.or_(same, pc.and_(pc.is_null(source), pc.is_null(lake)))
    if pa.types.is_floating(source.type):
        same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(source), pc.is_nan(lake)), False))
    return pc.invert(same)


def _diff(column: str, mask: pa.Array, offsets: pa.Array, lake: pa.Array | None, source: pa.Array) -> Diff | None:
    if not pc.any(mask).as_py():
        return None
    return Diff(column, offsets.filter(mask), None if lake is None else lake.filter(mask), source.filter(mask))


def _both_sides(name: str, source: pa.Array, lake: pa.Array, offsets: pa.Array) -> Diff | None:
    pair = comparable(source, lake)
    # No equality defined between the types: every row with a value on either side differs.
    mask = pc.invert(pc.and_(pc.is_null(source), pc.is_null(lake))) if pair is None else differs(*pair)
    return _diff(name, mask, offsets, lake, source)


def compare_columns(
    lake: pa.Table, source: Mapping[str, pa.Array], offsets: pa.Array, *, ignore: frozenset[str] = frozenset()
) -> Iterator[Diff]:
    """Every column of ``lake`` against ``source`` (aligned row for row), and every source field the lake lacks.

    A lake column the source has no field for must be null (the writer schema had no such
    field: K2 lands null); a source field the lake has no column for differs wherever the
    source has a value (the value was dropped). ``ignore``: lake columns not from the
    source (lineage, landing times).
    """
    for name in lake.column_names:
        if name in ignore:
            continue
        column = lake.column(name).combine_chunks()
        expected = source.get(name)
        if expected is None:
            expected = pa.nulls(len(column), column.type)
        diff = _both_sides(name, expected, column, offsets)
        if diff is not None:
            yield diff
    for name, expected in source.items():
        if name in lake.column_names:
            continue
        diff = _diff(name, pc.is_valid(expected), offsets, None, expected)
        if diff is not None:
            yield diff
