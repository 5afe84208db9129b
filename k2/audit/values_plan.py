"""How the value audit reads one writer schema: each field's wire shape, and how its raw values become the
Arrow column compared with the lake. Pure.

A field is read *raw* first, as the wire has it (an Avro ``int`` or ``long`` as int64, ``bytes``
and ``string`` as Arrow binary and string, a ``fixed`` as fixed-size binary, an ``enum`` as its
symbol), by either reader (:mod:`~k2.audit.values_columns` or fastavro); then converted here,
in Arrow kernels, by what the writer schema says it means: an ``int`` must fit 32 bits, a
decimal's bytes are its unscaled two's-complement integer at its scale (and must not have
more digits than its precision), a ``timestamp-millis`` long is milliseconds of a UTC
instant, a ``date`` days since the epoch. None of this is the worker's code
(:mod:`k2.avro.codec`, :mod:`k2.avro.batch`, :mod:`k2.lake.arrow`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Converted", "Slot", "WriterPlan", "raw_type", "strip_logical"]

_INT32 = (-(2**31), 2**31 - 1)
_UTC = "UTC"

#: Wire shapes: what a field's raw values are, whoever reads them.
BOOLEAN, VARINT, FLOAT, DOUBLE, BYTES, STRING, FIXED, ENUM = (
    "boolean",
    "varint",
    "float",
    "double",
    "bytes",
    "string",
    "fixed",
    "enum",
)
_RAW: Mapping[str, pa.DataType] = {
    BOOLEAN: pa.bool_(),
    VARINT: pa.int64(),
    FLOAT: pa.float32(),
    DOUBLE: pa.float64(),
    BYTES: pa.large_binary(),
    STRING: pa.large_string(),
    ENUM: pa.large_string(),
}


@dataclass(frozen=True)
class Slot:
    """A top-level field on the wire: its shape, and where a ``[null, T]`` union puts null (None: not a union)."""

    shape: str
    null_index: int | None = None
    size: int = 0
    """A ``fixed``'s size."""
    symbols: tuple[str, ...] = ()
    """An ``enum``'s symbols."""


def raw_type(slot: Slot) -> pa.DataType:
    """The Arrow type of a field's raw values."""
    return pa.binary(slot.size) if slot.shape == FIXED else _RAW[slot.shape]


class Converted(NamedTuple):
    """A field's values as the compared column, and the records whose value K2 cannot take."""

    array: pa.Array
    bad: np.ndarray | None
    """True where the value is not decodable by K2's rules (None: every value is)."""
    why: str


#: Raw values (an Arrow array of :func:`raw_type`) -> the compared column. Partials of module-level
#: functions, so a plan pickles.
Converter = Callable[[pa.Array], Converted]


def _mask(condition: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(condition, True).to_numpy(zero_copy_only=False), dtype=bool)


def _in_range(raw: pa.Array, low: int, high: int) -> np.ndarray:
    return _mask(pc.and_(pc.greater_equal(raw, low), pc.less_equal(raw, high)))


def _same(raw: pa.Array) -> Converted:
    return Converted(raw, None, "")


def _narrow(type_: pa.DataType, why: str, raw: pa.Array) -> Converted:
    """A varint that must fit 32 bits (Avro ``int``, ``date``, ``time-millis``), as ``type_``."""
    fits = _in_range(raw, *_INT32)
    kept = raw if fits.all() else pc.if_else(pa.array(fits), raw, None)
    return Converted(kept.cast(pa.int32()).cast(type_), None if fits.all() else ~fits, why)


def _scaled(unit: int, type_: pa.DataType, raw: pa.Array) -> Converted:
    """A long counting ``1/unit``-ths of ``type_``'s unit (millis into micros: 1000), as ``type_``."""
    limit = (2**63 - 1) // unit
    fits = _in_range(raw, -limit, limit)
    kept = raw if fits.all() else pc.if_else(pa.array(fits), raw, None)
    array = (pc.multiply(kept, unit) if unit != 1 else kept).cast(type_)
    return Converted(array, None if fits.all() else ~fits, f"not representable as {type_}")


def _unscaled_int64(raw: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each value's bytes as a big-endian two's-complement int64, and where that fits (at most 8 bytes)."""
    n = len(raw)
    if pa.types.is_fixed_size_binary(raw.type):
        size = raw.type.byte_width
        offsets = np.arange(n + 1, dtype=np.int64) * size + raw.offset * size
        data = raw.buffers()[1]
    else:
        offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[raw.offset : raw.offset + n + 1]
        data = raw.buffers()[2]
    body = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    padded = np.concatenate([np.zeros(8, np.uint8), body])
    starts, lengths = offsets[:-1] + 8, np.diff(offsets)
    short = lengths <= 8
    width = np.where(short, lengths, 0)
    window = padded[(starts + width)[:, None] - 8 + np.arange(8)]  # the 8 bytes ending where the value ends
    negative = (width > 0) & (padded[starts] >= 0x80)
    window = np.where(np.arange(8) >= (8 - width)[:, None], window, np.where(negative, 0xFF, 0)[:, None])
    return np.ascontiguousarray(window, dtype=np.uint8).view(">i8").reshape(n).astype(np.int64), short


def _decimal(precision: int, scale: int, raw: pa.Array) -> Converted:
    """Two's-complement big-endian unscaled integers (Avro ``decimal`` bytes or fixed) at ``scale``."""
    limit = 10**precision
    type_ = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    valid = raw.is_valid().to_numpy(zero_copy_only=False)
    if precision <= 18:
        unscaled, short = _unscaled_int64(raw)
        long_ones = np.flatnonzero(~short & valid)
        bad = valid & short & ~((unscaled > -limit) & (unscaled < limit))
        for i in long_ones.tolist():  # a non-minimal encoding, or a huge value: Python ints, one by one
            value = int.from_bytes(raw[i].as_py(), "big", signed=True)
            bad[i] = not -limit < value < limit
            unscaled[i] = 0 if bad[i] else value
        unscaled[bad | ~valid] = 0
        # Reinterpret the 128-bit unscaled integers at the scale (no rounding, no Decimal objects), then
        # narrow to the declared precision, which every value fits (checked above).
        wide = (
            pa.array(unscaled, pa.int64(), mask=~valid | bad).cast(pa.decimal128(38, 0)).view(pa.decimal128(38, scale))
        )
        return Converted(wide.cast(type_), bad if bad.any() else None, f"more digits than its precision {precision}")
    ints = [None if b is None else int.from_bytes(b, "big", signed=True) for b in raw.to_pylist()]
    flags = np.array([u is not None and not -limit < u < limit for u in ints], dtype=bool)
    values = [None if u is None or f else Decimal(u).scaleb(-scale) for u, f in zip(ints, flags, strict=True)]
    return Converted(
        pa.array(values, type_), flags if flags.any() else None, f"more digits than its precision {precision}"
    )


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
_SHAPES: Mapping[str, str] = {
    "boolean": BOOLEAN,
    "int": VARINT,
    "long": VARINT,
    "float": FLOAT,
    "double": DOUBLE,
    "bytes": BYTES,
    "string": STRING,
}


def _plan_type(avro_type: Any) -> tuple[Slot, Converter] | str:
    """A (non-union) Avro type's wire shape and converter, or why it is not compared."""
    if isinstance(avro_type, str):
        if avro_type not in _SHAPES:
            return f"Avro type {avro_type!r} (a named or null type) is not a column"
        slot = Slot(_SHAPES[avro_type])
        return slot, partial(_narrow, pa.int32(), "an int beyond 32 bits") if avro_type == "int" else _same
    if not isinstance(avro_type, Mapping):
        return f"not an Avro type: {avro_type!r}"
    kind, logical = avro_type.get("type"), avro_type.get("logicalType")
    if kind == "fixed":
        slot = Slot(FIXED, size=int(avro_type["size"]))
    elif kind == "enum":
        return Slot(ENUM, symbols=tuple(avro_type["symbols"])), _same
    elif kind in ("record", "error", "array", "map"):
        return f"a nested Avro {kind} is not compared"
    elif isinstance(kind, str) and kind in _SHAPES:
        slot = Slot(_SHAPES[kind])
    else:
        return _plan_type(kind)  # a named type spelled out again
    if logical == "decimal" and kind in ("bytes", "fixed") and type(avro_type.get("precision")) is int:
        return slot, partial(_decimal, int(avro_type["precision"]), int(avro_type.get("scale", 0)))
    if logical == "date" and kind == "int":
        return slot, partial(_narrow, pa.date32(), "a date beyond 32-bit days")
    if isinstance(logical, str) and logical in _TEMPORAL and kind == _TEMPORAL[logical][0]:
        _, unit, type_ = _TEMPORAL[logical]
        if kind == "int":
            return slot, partial(_narrow, type_, "an int beyond 32 bits")
        return slot, partial(_scaled, unit, type_)
    if kind == "int":
        return slot, partial(_narrow, pa.int32(), "an int beyond 32 bits")
    return slot, _same  # unknown logical types are ignored, as the spec says


def _plan_field(avro_type: Any) -> tuple[Slot, Converter] | str:
    """A field's shape and converter; a union is compared only as ``[null, T]``."""
    if not isinstance(avro_type, list):
        return _plan_type(avro_type)
    branches = [b for b in avro_type if b != "null"]
    if len(branches) != 1 or len(avro_type) != 2:
        return f"a union of {len(branches)} non-null branch(es) is not compared"
    planned = _plan_type(branches[0])
    if isinstance(planned, str):
        return planned
    slot, convert = planned
    return Slot(slot.shape, avro_type.index("null"), slot.size, slot.symbols), convert


def strip_logical(node: Any) -> Any:
    """The schema tree without logical types: fastavro then hands over the raw longs, ints and bytes."""
    if isinstance(node, list):
        return [strip_logical(n) for n in node]
    if isinstance(node, dict):
        return {k: strip_logical(v) for k, v in node.items() if k != "logicalType"}
    return node


@dataclass(frozen=True)
class FieldPlan:
    """A top-level field of a writer schema: its name, its wire shape, and how its raw values convert."""

    name: str
    slot: Slot
    convert: Converter


@dataclass(frozen=True)
class WriterPlan:
    """How to read records of one writer schema: field by field, or by fastavro's parsed raw schema."""

    schema_id: int
    parsed: Any
    """fastavro's parse of the schema without logical types (the per-record reader)."""
    fields: tuple[FieldPlan, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """Fields not compared, and why (nested types, unions of several types)."""

    @property
    def flat(self) -> bool:
        """Whether every field is one the column reader reads (nothing skipped)."""
        return not self.skipped

    @classmethod
    def of(cls, schema_id: int, schema_str: str) -> WriterPlan:
        """The plan of a registered schema.

        Raises:
            ValueError: the text is not an Avro record schema (K2 rejects its records as undecodable).
        """
        try:
            tree = json.loads(schema_str)
            parsed = fastavro.parse_schema(strip_logical(tree))
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise ValueError(f"schema id {schema_id} does not parse as Avro: {exc}") from exc
        if not isinstance(tree, dict) or tree.get("type") != "record":
            raise ValueError(f"schema id {schema_id} is not an Avro record schema")
        fields: list[FieldPlan] = []
        skipped: list[tuple[str, str]] = []
        for field in tree.get("fields", ()):
            planned = _plan_field(field["type"])
            if isinstance(planned, str):
                skipped.append((field["name"], planned))
            else:
                fields.append(FieldPlan(field["name"], *planned))
        return cls(schema_id, parsed, tuple(fields), tuple(skipped))
