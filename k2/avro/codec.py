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

Schemas passed to :func:`decode` and :func:`encode` must come from :func:`parse_schema`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import fastavro

from k2.errors import NotConfluentFramed, UndecodableError

__all__ = [
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "MAX_SCHEMA_ID",
    "ParsedSchema",
    "decode",
    "encode",
    "parse_schema",
    "split_frame",
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

# Logical types left as their underlying int (see the module docstring).
_RAW_LOGICAL_TYPES = frozenset(
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
        if out.get("logicalType") in _RAW_LOGICAL_TYPES:
            del out["logicalType"]
        return out
    return node


def parse_schema(schema: str | Mapping[str, Any] | list[Any]) -> ParsedSchema:
    """Parse an Avro schema (JSON text or tree) for :func:`decode`/:func:`encode`.

    Temporal logical types are stripped first so timestamps read as int millis; the wire
    bytes are identical either way (a ``timestamp-millis`` is a ``long``).
    """
    tree = json.loads(schema) if isinstance(schema, str) else schema
    return fastavro.parse_schema(_strip_temporal(tree))


def split_frame(data: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """Split a Confluent-framed value into ``(schema_id, avro_body)`` without copying the body.

    Raises :class:`NotConfluentFramed` when the value cannot be a framed Avro record at all:
    shorter than the header (an empty body is still a valid frame: a record with no fields),
    or a magic byte other than 0 (plain JSON, a string key written into the value, etc.).
    """
    view = memoryview(data)
    if view.nbytes < HEADER_SIZE:
        raise NotConfluentFramed(f"value is {view.nbytes} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, schema_id = _HEADER.unpack_from(view)
    if magic != MAGIC_BYTE:
        raise NotConfluentFramed(f"magic byte is {magic & 0xFF:#04x}, expected 0x00")
    return schema_id, view[HEADER_SIZE:]


def decode(
    payload: bytes | bytearray | memoryview,
    writer_schema: ParsedSchema,
    reader_schema: ParsedSchema | None = None,
) -> dict[str, Any]:
    """Decode one Avro body (the part after the header) into a dict, all of it or nothing.

    fastavro raises on a truncated body but silently ignores bytes left over after a
    complete record; both mean the bytes are not what the schema says, so both raise
    :class:`UndecodableError` rather than return a partial or misread record. Any other
    failure (bad union index, invalid UTF-8, negative length...) is wrapped the same way.
    ``reader_schema`` (also from :func:`parse_schema`) enables Avro schema resolution.
    """
    size = memoryview(payload).nbytes
    stream = io.BytesIO(payload)
    try:
        record = fastavro.schemaless_reader(stream, writer_schema, reader_schema)
    except Exception as exc:
        raise UndecodableError(f"{type(exc).__name__}: {exc}") from exc
    consumed = stream.tell()
    if consumed != size:
        raise UndecodableError(f"{size - consumed} trailing bytes after a complete record of {consumed} bytes")
    if not isinstance(record, dict):
        raise UndecodableError(f"decoded a {type(record).__name__}, expected a record")
    return record


def encode(schema_id: int, parsed_schema: ParsedSchema, record: Mapping[str, Any]) -> bytes:
    """Frame and encode one record: byte-for-byte what confluent-kafka's ``AvroSerializer`` writes.

    Useful for tests and tools that already know the schema id; producers that should
    check the registry use the serializer instead.
    """
    stream = io.BytesIO()
    stream.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(stream, parsed_schema, record)
    return stream.getvalue()
