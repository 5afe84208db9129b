"""The Confluent wire format, as pure functions, so decoding is testable without Kafka or a registry.

A framed value is ``0x00`` (magic) + a 4-byte big-endian schema id + the Avro binary body
(schemaless: no Avro container header). The schema id says which *writer* schema to read the
body with; the registry (:mod:`k2.avro.registry`) turns the id into a schema.

Logical types, decided once here so every consumer sees the same shapes:

* temporal logical types (``timestamp-millis`` and friends) are **not** converted: they come
  back as the raw ``int`` (epoch milliseconds for ``timestamp-millis``). The downstream
  builds Arrow timestamp columns from ints directly; a ``datetime`` per value would be
  created only to be taken apart again. :func:`parse_schema` strips these annotations.
* ``decimal`` **is** converted, to :class:`decimal.Decimal` at the schema's scale
  (``Decimal('36.667000')`` for scale 6), because the raw form is two's-complement bytes
  that nobody downstream should have to interpret.

What fastavro's reader does not check, :func:`decode` does, for the record's top-level
fields (K2's contracts are flat): an ``int`` must fit 32 bits (fastavro reads any 64-bit
varint into it) and a decimal's unscaled value must have at most ``precision`` digits
(its bytes can carry any magnitude; fastavro would silently round it, and turning a
10 MB one into a ``Decimal`` takes hours). Either is :class:`UndecodableError`.

Schemas passed to :func:`decode` and :func:`encode` must come from :func:`parse_schema`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

import fastavro
import fastavro.read

from k2.errors import NotConfluentFramed, UndecodableError

__all__ = [
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "MAX_SCHEMA_ID",
    "TEMPORAL_LOGICAL_TYPES",
    "ParsedSchema",
    "decode",
    "encode",
    "frame_schema_id",
    "parse_schema",
    "split_frame",
    "stored_schema_id",
]

MAGIC_BYTE = 0
HEADER_SIZE = 5
MAX_SCHEMA_ID = 0x7FFF_FFFF
"""The largest id a registry can hand out: ids are positive Java ints, so a header id with
the high bit set names no schema (and would not fit the rejects table's 32-bit column)."""
_HEADER = struct.Struct(">bI")

#: What fastavro returns from ``parse_schema``: a dict for records (our contracts), but
#: Avro also allows a list (union) or a str (primitive) at the top level.
ParsedSchema = Any

#: Logical types left as their underlying int (see the module docstring).
TEMPORAL_LOGICAL_TYPES = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "date",
        "time-millis",
        "time-micros",
    }
)


def _strip_temporal(node: Any) -> Any:
    """Copy of a schema JSON tree without temporal logical types, so fastavro leaves them as ints."""
    if isinstance(node, list):
        return [_strip_temporal(item) for item in node]
    if isinstance(node, dict):
        out = {key: _strip_temporal(value) for key, value in node.items()}
        if out.get("logicalType") in TEMPORAL_LOGICAL_TYPES:
            del out["logicalType"]
        return out
    return node


#: Key under which :func:`parse_schema` keeps a record schema's :class:`_DecodePlan` in the
#: parsed dict (fastavro ignores keys it does not know, as it keeps its own ``__`` keys there).
_PLAN = "__k2_decode_plan"
_MAX_DECIMAL_PRECISION = 1000
"""Decimals declaring more digits than this are left to fastavro unguarded (no such contract exists)."""
_read_decimal = fastavro.read.LOGICAL_READERS["bytes-decimal"]  # fastavro's own conversion, called by decode


_GUARD_ABOVE = 1024
"""Bodies larger than this decode with decimals as raw bytes, their size checked before conversion.

fastavro turns a decimal's bytes into a ``Decimal`` in quadratic time (100 kB: a second;
10 MB: hours, a stuck partition). A body of at most this size cannot hold a decimal that
costs more than ~0.1 ms, so the usual frame keeps fastavro's own, cheaper path.
"""


_INT32: tuple[int, int] = (-0x8000_0000, 0x7FFF_FFFF)


class _DecodePlan(NamedTuple):
    """The checks :func:`decode` adds to fastavro for one record schema."""

    guarded: ParsedSchema
    """The schema with its top-level ``bytes`` decimals read as plain bytes (the same wire bytes), for large bodies."""
    decimals: tuple[tuple[str, dict[str, Any]], ...]
    """Each top-level decimal field and its decimal type."""
    limits: tuple[tuple[str, Any, Any, str], ...]
    """Each checked field (decimals and ints), the closed range its values must lie in, and what it means if not."""
    required: tuple[tuple[str, Any, Any], ...]
    """The fields of ``limits`` that are never null: one chained comparison each, per record."""
    optional: tuple[tuple[str, Any, Any], ...]
    """The fields of ``limits`` that may be null."""


def _decode_plan(tree: Any) -> _DecodePlan | None:
    """The :class:`_DecodePlan` of a record schema tree (temporal types already stripped), or None.

    Only a field whose type is one primitive or one primitive-or-null union is planned: in a
    union with several non-null branches the reader cannot tell which branch a value took.
    """
    if not isinstance(tree, dict) or tree.get("type") != "record" or not isinstance(tree.get("fields"), list):
        return None
    fields: list[Any] = []
    decimals: list[tuple[str, dict[str, Any]]] = []
    limits: list[tuple[str, Any, Any, str]] = []
    optional: list[tuple[str, Any, Any]] = []
    for field in tree["fields"]:
        fields.append(field)
        if not isinstance(field, dict) or not isinstance(field.get("name"), str):
            continue
        name, kind = field["name"], field.get("type")
        branches = kind if isinstance(kind, list) else [kind]
        others = [b for b in branches if b != "null"]
        if len(others) != 1 or len(branches) - len(others) > 1:
            continue
        branch = others[0]
        base = branch.get("type") if isinstance(branch, dict) else branch
        low: Any
        high: Any
        if base == "int":
            low, high = _INT32
            problem = "does not fit Avro's 32-bit int"
        elif (
            isinstance(branch, dict)
            and base in ("bytes", "fixed")
            and branch.get("logicalType") == "decimal"
            and type(branch.get("precision")) is int
            and 0 < branch["precision"] <= _MAX_DECIMAL_PRECISION
        ):
            if base == "bytes":  # a fixed is bounded by its size; it may also be named and referenced again
                plain = {k: v for k, v in branch.items() if k != "logicalType"}
                new_kind = [plain if b is branch else b for b in branches] if isinstance(kind, list) else plain
                fields[-1] = {**field, "type": new_kind}
            decimals.append((name, branch))
            scale = int(branch.get("scale", 0))
            high = (Decimal(10 ** branch["precision"]) - 1).scaleb(-scale)  # 999999999999.999999 for (18, 6)
            low = -high
            problem = f"has more digits than its precision {branch['precision']}"
        else:
            continue
        limits.append((name, low, high, problem))
        if len(branches) > 1:
            optional.append((name, low, high))
    if not limits:
        return None
    required = tuple((name, low, high) for name, low, high, _ in limits if (name, low, high) not in optional)
    read_tree = {**tree, "fields": fields}
    return _DecodePlan(fastavro.parse_schema(read_tree), tuple(decimals), tuple(limits), required, tuple(optional))


def parse_schema(schema: str | Mapping[str, Any] | list[Any]) -> ParsedSchema:
    """Parse an Avro schema (JSON text or tree) for :func:`decode`/:func:`encode`.

    Temporal logical types are stripped first so timestamps read as int millis; the wire
    bytes are identical either way (a ``timestamp-millis`` is a ``long``). A record schema
    also carries the plan :func:`decode` checks its values with (see the module docstring).
    """
    tree = _strip_temporal(json.loads(schema) if isinstance(schema, str) else schema)
    parsed = fastavro.parse_schema(tree)
    plan = _decode_plan(tree)
    if plan is not None and isinstance(parsed, dict):
        parsed[_PLAN] = plan
    return parsed


def stored_schema_id(value: bytes | None) -> int | None:
    """The schema id a reject row stores for ``value``: its header's id if framed and a valid registry id, else None."""
    if value is None or len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
        return None
    schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
    return schema_id if schema_id <= MAX_SCHEMA_ID else None


def frame_schema_id(data: bytes | bytearray | memoryview) -> int:
    """The schema id in a Confluent-framed value's header (the body starts at :data:`HEADER_SIZE`).

    Raises :class:`NotConfluentFramed` when the value cannot be a framed Avro record at all:
    shorter than the header (an empty body is still a valid frame: a record with no fields),
    or a magic byte other than 0 (plain JSON, a string key written into the value, etc.).
    """
    size = len(data) if type(data) is bytes else memoryview(data).nbytes
    if size < HEADER_SIZE:
        raise NotConfluentFramed(f"value is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise NotConfluentFramed(f"magic byte is {magic & 0xFF:#04x}, expected 0x00")
    return schema_id


def split_frame(data: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """Split a Confluent-framed value into ``(schema_id, avro_body)`` without copying the body.

    Raises :class:`NotConfluentFramed` as :func:`frame_schema_id` does. (The worker's path
    uses that and ``decode(value, schema, offset=HEADER_SIZE)``, which spares the view.)
    """
    return frame_schema_id(data), memoryview(data)[HEADER_SIZE:]


def decode(
    payload: bytes | bytearray | memoryview,
    writer_schema: ParsedSchema,
    reader_schema: ParsedSchema | None = None,
    *,
    offset: int = 0,
) -> dict[str, Any]:
    """Decode one Avro body (the part after the header) into a dict, all of it or nothing.

    fastavro raises on a truncated body but silently ignores bytes left over after a
    complete record; both mean the bytes are not what the schema says, so both raise
    :class:`UndecodableError` rather than return a partial or misread record. Any other
    failure (bad union index, invalid UTF-8, negative length...) is wrapped the same way.
    So is an ``int`` beyond 32 bits or a decimal beyond its precision (checked before the
    decimal is built, so a huge one costs a linear scan, not a quadratic conversion).
    ``reader_schema`` (also from :func:`parse_schema`) enables Avro schema resolution.
    The body is ``payload[offset:]``: a whole frame with ``offset=HEADER_SIZE`` is read in
    place (``bytes`` are not copied; a memoryview slice would be).
    """
    stream = io.BytesIO(payload)
    size = (len(payload) if type(payload) is bytes else memoryview(payload).nbytes) - offset
    if offset:
        stream.seek(offset)
    plan: _DecodePlan | None = writer_schema.get(_PLAN) if type(writer_schema) is dict else None
    read_schema = plan.guarded if plan is not None and size > _GUARD_ABOVE else writer_schema
    try:
        record = fastavro.schemaless_reader(stream, read_schema, reader_schema)
    except Exception as exc:
        raise UndecodableError(f"{type(exc).__name__}: {exc}") from exc
    consumed = stream.tell() - offset
    if consumed != size:
        raise UndecodableError(f"{size - consumed} trailing bytes after a complete record of {consumed} bytes")
    if not isinstance(record, dict):
        raise UndecodableError(f"decoded a {type(record).__name__}, expected a record")
    if plan is None:
        return record
    if read_schema is not writer_schema:
        _convert_guarded(record, plan.decimals)
    if reader_schema is not None:  # fields may be missing or resolved: check one by one
        _check_limits(record, plan.limits)
        return record
    # Inline, not a helper: this runs for every record (a call costs as much as the comparisons).
    for name, low, high in plan.required:
        if not low <= record[name] <= high:
            _check_limits(record, plan.limits)
    for name, low, high in plan.optional:
        value = record[name]
        if value is not None and not low <= value <= high:
            _check_limits(record, plan.limits)
    return record


def _check_limits(record: dict[str, Any], limits: tuple[tuple[str, Any, Any, str], ...]) -> None:
    """Raise :class:`UndecodableError` naming the first field outside its range (see :func:`decode`).

    fastavro rounds an oversized decimal to ``precision`` digits, which leaves it beyond the
    range, so comparing the ``Decimal`` is enough.
    """
    for name, low, high, problem in limits:
        value = record.get(name)
        if value is None or low <= value <= high:
            continue
        raise UndecodableError(f"{name}: {value} {problem}")


def _convert_guarded(record: dict[str, Any], decimals: tuple[tuple[str, dict[str, Any]], ...]) -> None:
    """Turn the raw decimal bytes of a guarded read into Decimals, refusing oversized ones before conversion."""
    for name, decimal_type in decimals:
        data = record.get(name)
        if type(data) is not bytes:
            continue
        limit = 10 ** decimal_type["precision"]
        if not -limit < int.from_bytes(data, "big", signed=True) < limit:
            raise UndecodableError(
                f"{name}: a decimal of {len(data)} bytes has more digits than its precision {decimal_type['precision']}"
            )
        record[name] = _read_decimal(data, decimal_type, None)


def encode(schema_id: int, parsed_schema: ParsedSchema, record: Mapping[str, Any]) -> bytes:
    """Frame and encode one record: byte-for-byte what confluent-kafka's ``AvroSerializer`` writes.

    Useful for tests and tools that already know the schema id; producers that should
    check the registry use the serializer instead.
    """
    stream = io.BytesIO()
    stream.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(stream, parsed_schema, record)
    return stream.getvalue()
