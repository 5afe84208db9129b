"""Source records decoded for the value audit, independently of the worker's decoders. Pure.

The worker reads a batch with polars' Avro reader (:mod:`k2.avro.batch`), falls back to
fastavro through :mod:`k2.avro.codec` (which converts decimals and guards their size), and
builds rows with :mod:`k2.lake.arrow`. This module shares none of that code: it reads each
record with fastavro's own schemaless reader on the writer schema *stripped of every
logical type*, and turns the raw values into Arrow columns itself: a decimal's unscaled
two's-complement integer reinterpreted at its scale, a ``timestamp-millis`` long times
1000 as a UTC instant, a ``date``'s days since the epoch. What it does share with the
worker is the writer schema text (by id, from the registry) and, for the records the
worker sends through its per-record path only, fastavro's binary reader.

What K2 refuses to decode, this refuses too, with the reason (a row landed for such a record
is a mismatch): a value that is not Confluent-framed, a schema id with the high bit set, an
id the registry does not know or that is not registered under the topic's subject (the
caller's ``resolve`` says so), a body fastavro cannot read or that leaves bytes over, an
``int`` beyond 32 bits, a decimal with more digits than its precision, a value its column
type cannot hold.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "OFFSET",
    "Decoded",
    "FieldPlan",
    "Group",
    "WriterPlan",
    "decode_block",
    "schema_ids",
]

OFFSET = "offset"
"""The column of a decoded group holding each record's Kafka offset."""

_HEADER = 5
_MAX_ID = 0x7FFF_FFFF
_NO_ID = -1
_INT32 = (-(2**31), 2**31 - 1)
_UTC = "UTC"


class Converted(NamedTuple):
    """One field of a group of records as an Arrow array, and the records whose value K2 cannot take."""

    array: pa.Array
    bad: np.ndarray | None
    """True where the value is not decodable by K2's rules (None: every value is)."""
    why: str


Converter = Callable[[list[Any]], Converted]


@dataclass(frozen=True)
class FieldPlan:
    """A top-level field of a writer schema and how its raw values become an Arrow column."""

    name: str
    convert: Converter


def _fits(ints: pa.Array, low: int, high: int) -> np.ndarray:
    """Where ``ints`` (int64, nulls allowed) lie in ``[low, high]``; nulls fit."""
    inside = pc.and_(pc.greater_equal(ints, low), pc.less_equal(ints, high))
    return np.asarray(pc.fill_null(inside, True).to_numpy(zero_copy_only=False), dtype=bool)


def _longs(values: list[Any]) -> tuple[pa.Array, np.ndarray | None]:
    """Python ints as int64; a value beyond 64 bits (fastavro reads varints into Python ints) is null and bad."""
    try:
        return pa.array(values, pa.int64()), None
    except (OverflowError, pa.ArrowInvalid):
        bad = np.array([v is not None and not -(2**63) <= v < 2**63 for v in values], dtype=bool)
        return pa.array([None if b else v for v, b in zip(values, bad, strict=True)], pa.int64()), bad


def _plain(type_: pa.DataType) -> Converter:
    def convert(values: list[Any]) -> Converted:
        return Converted(pa.array(values, type_), None, "")

    return convert


def _long(values: list[Any]) -> Converted:
    array, bad = _longs(values)
    return Converted(array, bad, "a long beyond 64 bits")


def _int(values: list[Any]) -> Converted:
    longs, bad = _longs(values)
    fits = _fits(longs, *_INT32)
    if bad is not None:
        fits &= ~bad
    if fits.all():
        return Converted(longs.cast(pa.int32()), None, "")
    return Converted(pc.if_else(pa.array(fits), longs, None).cast(pa.int32()), ~fits, "an int beyond 32 bits")


def _scaled(unit: int, type_: pa.DataType) -> Converter:
    """An integer count of ``1/unit``-ths of the target's unit (millis -> micros: unit 1000, say)."""
    limit = (2**63 - 1) // unit

    def convert(values: list[Any]) -> Converted:
        longs, bad = _longs(values)
        fits = _fits(longs, -limit, limit)
        if bad is not None:
            fits &= ~bad
        kept = longs if fits.all() else pc.if_else(pa.array(fits), longs, None)
        array = (pc.multiply(kept, unit) if unit != 1 else kept).cast(type_)
        return Converted(array, None if fits.all() else ~fits, f"not representable as {type_}")

    return convert


def _date(values: list[Any]) -> Converted:
    days = _int(values)
    return Converted(days.array.cast(pa.date32()), days.bad, "a date beyond 32-bit days")


def _decimal(precision: int, scale: int) -> Converter:
    """Two's-complement big-endian unscaled integers (Avro ``decimal`` bytes or fixed) at ``scale``."""
    limit = 10**precision
    type_ = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)

    def convert(values: list[Any]) -> Converted:
        unscaled = [None if v is None else int.from_bytes(v, "big", signed=True) for v in values]
        bad = np.array([u is not None and not -limit < u < limit for u in unscaled], dtype=bool)
        if bad.any():
            unscaled = [None if b else u for u, b in zip(unscaled, bad, strict=True)]
        if precision <= 18:
            # Reinterpret the 128-bit unscaled integers at the scale (no rounding, no Decimal objects),
            # then narrow to the declared precision, which every value fits (checked above).
            wide = pa.array(unscaled, pa.int64()).cast(pa.decimal128(38, 0)).view(pa.decimal128(38, scale))
            array = wide.cast(type_)
        else:
            from decimal import Decimal

            array = pa.array([None if u is None else Decimal(u).scaleb(-scale) for u in unscaled], type_)
        return Converted(array, bad if bad.any() else None, f"more digits than its precision {precision}")

    return convert


_PRIMITIVES: Mapping[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.large_binary(),
    "string": pa.large_string(),
}

#: Temporal logical types: (underlying Avro type, how many target units one raw unit is, Arrow type).
_TEMPORAL: Mapping[str, tuple[str, int, pa.DataType]] = {
    "timestamp-millis": ("long", 1000, pa.timestamp("us", _UTC)),
    "timestamp-micros": ("long", 1, pa.timestamp("us", _UTC)),
    "timestamp-nanos": ("long", 1, pa.timestamp("ns", _UTC)),
    "local-timestamp-millis": ("long", 1000, pa.timestamp("us")),
    "local-timestamp-micros": ("long", 1, pa.timestamp("us")),
    "local-timestamp-nanos": ("long", 1, pa.timestamp("ns")),
    "time-millis": ("int", 1, pa.time32("ms")),
    "time-micros": ("long", 1, pa.time64("us")),
}


def _converter(avro_type: Any) -> Converter | str:
    """How a (non-union) Avro type's raw values become a column, or why they cannot be compared."""
    if isinstance(avro_type, str):
        if avro_type == "int":
            return _int
        if avro_type == "long":
            return _long
        if avro_type in _PRIMITIVES:
            return _plain(_PRIMITIVES[avro_type])
        return f"Avro type {avro_type!r} (a named or null type) is not a column"
    if not isinstance(avro_type, Mapping):
        return f"not an Avro type: {avro_type!r}"
    kind, logical = avro_type.get("type"), avro_type.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed") and type(avro_type.get("precision")) is int:
        return _decimal(int(avro_type["precision"]), int(avro_type.get("scale", 0)))
    if logical == "date" and kind == "int":
        return _date
    if isinstance(logical, str) and logical in _TEMPORAL and kind == _TEMPORAL[logical][0]:
        _, unit, type_ = _TEMPORAL[logical]
        return _scaled(unit, type_) if kind == "long" else _plain_int_time(type_)
    if logical == "uuid" and kind == "string":
        return _plain(pa.large_string())
    if kind == "enum":
        return _plain(pa.large_string())
    if kind == "fixed":
        return _plain(pa.binary(int(avro_type["size"])))
    if kind in ("record", "error", "array", "map"):
        return f"a nested Avro {kind} is not compared"
    return _converter(kind)  # a wrapped primitive; unknown logical types are ignored, as the spec says


def _plain_int_time(type_: pa.DataType) -> Converter:
    def convert(values: list[Any]) -> Converted:
        ints = _int(values)
        return Converted(ints.array.cast(type_), ints.bad, ints.why)

    return convert


def _field_converter(avro_type: Any) -> Converter | str:
    """A field's converter; a union is compared only as ``[null, T]`` (one branch and null)."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1:
            return f"a union of {len(branches)} non-null branches is not compared"
        return _converter(branches[0])
    return _converter(avro_type)


def _strip_logical(node: Any) -> Any:
    """The schema tree without logical types: fastavro then hands over the raw longs, ints and bytes."""
    if isinstance(node, list):
        return [_strip_logical(n) for n in node]
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    return node


@dataclass(frozen=True)
class WriterPlan:
    """How to read records of one writer schema: fastavro's parsed raw schema and a converter per field."""

    schema_id: int
    parsed: Any
    fields: tuple[FieldPlan, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """Fields not compared, and why (nested types, unions of several types)."""

    @classmethod
    def of(cls, schema_id: int, schema_str: str) -> WriterPlan:
        """The plan of a registered schema.

        Raises:
            ValueError: the text is not an Avro record schema (K2 rejects its records as undecodable).
        """
        try:
            tree = json.loads(schema_str)
            parsed = fastavro.parse_schema(_strip_logical(tree))
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise ValueError(f"schema id {schema_id} does not parse as Avro: {exc}") from exc
        if not isinstance(tree, dict) or tree.get("type") != "record":
            raise ValueError(f"schema id {schema_id} is not an Avro record schema")
        fields: list[FieldPlan] = []
        skipped: list[tuple[str, str]] = []
        for field in tree.get("fields", ()):
            converter = _field_converter(field["type"])
            if isinstance(converter, str):
                skipped.append((field["name"], converter))
            else:
                fields.append(FieldPlan(field["name"], converter))
        return cls(schema_id, parsed, tuple(fields), tuple(skipped))


#: What a schema id resolves to: its plan, or the reason K2 rejects its records (unknown id, wrong subject...).
Resolve = Callable[[int], WriterPlan | str]


@dataclass(frozen=True)
class Group:
    """The records of a block that decode with one writer schema: ``offset`` and a column per field."""

    plan: WriterPlan
    table: pa.Table


@dataclass(frozen=True)
class Decoded:
    """A block of source records as K2's definition reads them."""

    groups: tuple[Group, ...]
    undecodable: pa.Table
    """``offset`` and ``why`` of each record K2 cannot decode (a row for one is a mismatch)."""


def schema_ids(values: Sequence[bytes | None]) -> np.ndarray:
    """Each value's Confluent schema id, or -1 where the value is not framed (or the id has the high bit set)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    blank = b"\x01\x00\x00\x00\x00"  # not magic 0: reads as unframed
    heads = b"".join([v[:_HEADER] if v is not None and len(v) >= _HEADER else blank for v in values])
    raw = np.frombuffer(heads, dtype=np.uint8).reshape(n, _HEADER)
    ids = raw[:, 1:].astype(np.int64)
    out = (ids[:, 0] << 24) | (ids[:, 1] << 16) | (ids[:, 2] << 8) | ids[:, 3]
    framed = (raw[:, 0] == 0) & (out <= _MAX_ID)
    return np.where(framed, out, _NO_ID)


def _unframed_reason(value: bytes | None) -> str:
    if value is None:
        return "the value is null (a tombstone)"
    if len(value) < _HEADER:
        return f"value of {len(value)} bytes is shorter than the Confluent header"
    if value[0] != 0:
        return f"magic byte {value[0]:#04x}, not 0x00: not Confluent-framed"
    return f"schema id {int.from_bytes(value[1:_HEADER], 'big')} has the high bit set"


def _read(
    values: Sequence[bytes], index: np.ndarray, parsed: Any
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str]]]:
    """fastavro on each body; the records read whole, their indices, and ``(index, why)`` of the rest."""
    read = fastavro.schemaless_reader
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    for i in index.tolist():
        value = values[i]
        stream = io.BytesIO(value)
        stream.seek(_HEADER)
        try:
            record = read(stream, parsed)
        except Exception as exc:  # fastavro raises many types for bad bytes: each is "undecodable"
            failed.append((i, f"undecodable: {type(exc).__name__}: {exc}"))
            continue
        left = len(value) - stream.tell()
        if left:
            failed.append((i, f"undecodable: {left} trailing byte(s) after the record"))
            continue
        if not isinstance(record, dict):
            failed.append((i, f"undecodable: decoded a {type(record).__name__}, not a record"))
            continue
        records.append(record)
        kept.append(i)
    return records, kept, failed


def _columns(records: list[dict[str, Any]], names: list[str]) -> list[list[Any]]:
    """The records' values field by field (a comprehension per field beats a getter and a transpose)."""
    return [[r[name] for r in records] for name in names]


def _group(
    plan: WriterPlan, offsets: np.ndarray, values: Sequence[bytes], index: np.ndarray
) -> tuple[Group | None, list[tuple[int, str]]]:
    records, kept, failed = _read(values, index, plan.parsed)
    if not records:
        return None, failed
    names = [f.name for f in plan.fields]
    bad = np.zeros(len(records), dtype=bool)
    why = [""] * len(records)
    arrays: dict[str, pa.Array] = {}
    for field, column in zip(plan.fields, _columns(records, names), strict=True):
        converted = field.convert(column)
        arrays[field.name] = converted.array
        if converted.bad is not None:
            for j in np.flatnonzero(converted.bad & ~bad).tolist():
                why[j] = f"undecodable: {field.name}: {converted.why}"
            bad |= converted.bad
    kept_offsets = offsets[np.asarray(kept, dtype=np.int64)]
    table = pa.table({OFFSET: pa.array(kept_offsets, pa.int64()), **arrays})
    if bad.any():
        failed += [(kept[j], why[j]) for j in np.flatnonzero(bad).tolist()]
        table = table.filter(pa.array(~bad))
    return (Group(plan, table) if table.num_rows else None), failed


def decode_block(offsets: Sequence[int] | np.ndarray, values: Sequence[bytes | None], resolve: Resolve) -> Decoded:
    """Decode the records at ``offsets`` (ascending) with their writer schemas, K2's way (module docstring)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ids = schema_ids(values)
    groups: list[Group] = []
    failed: list[tuple[int, str]] = [(i, _unframed_reason(values[i])) for i in np.flatnonzero(ids == _NO_ID).tolist()]
    for schema_id in np.unique(ids[ids != _NO_ID]).tolist():
        index = np.flatnonzero(ids == schema_id)
        plan = resolve(int(schema_id))
        if isinstance(plan, str):
            failed += [(i, plan) for i in index.tolist()]
            continue
        group, bad = _group(plan, offsets, values, index)  # type: ignore[arg-type]  # framed: never None
        failed += bad
        if group is not None:
            groups.append(group)
    failed.sort()
    undecodable = pa.table(
        {
            OFFSET: pa.array(offsets[np.asarray([i for i, _ in failed], dtype=np.int64)], pa.int64()),
            "why": pa.array([w for _, w in failed], pa.string()),
        }
    )
    return Decoded(tuple(groups), undecodable)
