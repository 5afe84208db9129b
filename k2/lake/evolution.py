"""Which Iceberg columns a new Avro writer schema needs. Pure.

When a producer registers a backward-compatible writer schema that adds a field
(say an optional ``trade_id``), the table must gain a column before rows carrying it
are appended. The caller computes :func:`new_optional_fields` once per new writer
schema id and hands the result to ``IcebergWriter.ensure_columns``, which applies it
with ``update_schema().union_by_name``. Added columns are always optional: rows
landed before the change have no value for them.

Only types :mod:`k2.lake.arrow` converts exactly are mapped; anything else raises
``ValueError`` so a schema change K2 cannot land faithfully stops loudly instead of
landing wrong values (e.g. ``timestamp-micros`` ints read as milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

__all__ = ["avro_field_to_iceberg", "iceberg_type_for_avro", "new_optional_fields"]

_PRIMITIVES: Mapping[str, IcebergType] = {
    "boolean": BooleanType(),
    "int": IntegerType(),
    "long": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "bytes": BinaryType(),
    "string": StringType(),
}

_UNSUPPORTED_LOGICAL = {
    "timestamp-micros",
    "timestamp-nanos",
    "local-timestamp-millis",
    "local-timestamp-micros",
    "local-timestamp-nanos",
    "time-millis",
    "time-micros",
    "uuid",
}


def iceberg_type_for_avro(avro_type: Any) -> tuple[IcebergType, bool]:
    """The Iceberg type of an Avro type (as in a ``.avsc`` or fastavro's parsed schema), and if it is nullable.

    Raises:
        ValueError: the type is a record, array, map, a union of several non-null
            branches, or a logical type K2 does not land exactly.
    """
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type], False
        raise ValueError(f"Avro type {avro_type!r} cannot be added as a column (named or null type)")
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"Avro union {avro_type!r} has {len(branches)} non-null branches; only [null, T] maps")
        iceberg_type, _ = iceberg_type_for_avro(branches[0])
        return iceberg_type, len(branches) != len(avro_type)
    if isinstance(avro_type, Mapping):
        kind = avro_type.get("type")
        logical = avro_type.get("logicalType")
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return DecimalType(int(avro_type["precision"]), int(avro_type.get("scale", 0))), False
        if logical == "date" and kind == "int":
            return DateType(), False
        if logical == "timestamp-millis" and kind == "long":
            return TimestamptzType(), False
        if logical in _UNSUPPORTED_LOGICAL:
            raise ValueError(f"Avro logical type {logical!r} is not landed by K2")
        if kind == "enum":
            return StringType(), False
        if kind == "fixed":
            return FixedType(int(avro_type["size"])), False
        if kind in ("record", "array", "map", "error"):
            raise ValueError(f"nested Avro type {kind!r} cannot be added as a column")
        return iceberg_type_for_avro(kind)  # a wrapped primitive; unknown logical types are ignored, per the spec
    raise ValueError(f"not an Avro type: {avro_type!r}")


def avro_field_to_iceberg(field: Mapping[str, Any], field_id: int) -> NestedField:
    """An Avro record field as an Iceberg column, optional exactly where the Avro type is nullable."""
    iceberg_type, nullable = iceberg_type_for_avro(field["type"])
    return NestedField(field_id, field["name"], iceberg_type, required=not nullable, doc=field.get("doc"))


def new_optional_fields(avro_schema: Mapping[str, Any], table_schema: Schema) -> list[NestedField]:
    """Columns of ``avro_schema``'s fields that ``table_schema`` lacks, all optional.

    Field ids are placeholders numbered from 1: ``union_by_name`` matches by name and
    assigns real ids. Empty when the table already has every field.
    """
    names = {f.name for f in table_schema.fields}
    new = [f for f in avro_schema.get("fields", ()) if f["name"] not in names]
    return [
        NestedField(i, c.name, c.field_type, required=False, doc=c.doc)
        for i, c in enumerate((avro_field_to_iceberg(f, 0) for f in new), start=1)
    ]
