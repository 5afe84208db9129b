"""Avro writer-schema fields to Iceberg columns (the pure half of schema evolution)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import fastavro
import pytest
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    TimestamptzType,
)

from k2.lake.evolution import iceberg_type_for_avro, new_optional_fields
from k2.lake.schemas import TRADES_SCHEMA


@pytest.mark.parametrize(
    ("avro", "expected"),
    [
        ("string", (StringType(), False)),
        ("int", (IntegerType(), False)),
        ("long", (LongType(), False)),
        ("boolean", (BooleanType(), False)),
        ("float", (FloatType(), False)),
        ("double", (DoubleType(), False)),
        ("bytes", (BinaryType(), False)),
        (["null", "string"], (StringType(), True)),
        (["long", "null"], (LongType(), True)),
        ({"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}, (DecimalType(18, 6), False)),
        ({"type": "long", "logicalType": "timestamp-millis"}, (TimestamptzType(), False)),
        ({"type": "int", "logicalType": "date"}, (DateType(), False)),
        ({"type": "enum", "name": "Side", "symbols": ["B", "S"]}, (StringType(), False)),
        ({"type": "fixed", "name": "F", "size": 4}, (FixedType(4), False)),
        ({"type": "string", "logicalType": "made-up"}, (StringType(), False)),
        ({"type": "string"}, (StringType(), False)),
    ],
)
def test_types(avro: Any, expected: Any) -> None:
    assert iceberg_type_for_avro(avro) == expected


@pytest.mark.parametrize(
    "avro",
    [
        ["null", "string", "long"],
        {"type": "array", "items": "string"},
        {"type": "record", "name": "R", "fields": []},
        {"type": "long", "logicalType": "timestamp-micros"},
        {"type": "string", "logicalType": "uuid"},
        "null",
        "com.k2.SomeNamedType",
    ],
)
def test_unsupported_types_are_refused(avro: Any) -> None:
    with pytest.raises(ValueError):
        iceberg_type_for_avro(avro)


def test_new_writer_schema_adds_only_the_new_field_as_optional() -> None:
    schema = json.loads(resources.files("k2.avro").joinpath("trade.avsc").read_text())
    schema["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None})
    schema["fields"].append({"name": "lot", "type": "int", "default": 1})
    parsed = fastavro.parse_schema(schema)
    assert isinstance(parsed, dict)
    new = new_optional_fields(parsed, TRADES_SCHEMA)
    assert [(f.name, f.field_type, f.required) for f in new] == [
        ("trade_id", StringType(), False),
        ("lot", IntegerType(), False),
    ]
    assert (
        new_optional_fields(json.loads(resources.files("k2.avro").joinpath("trade.avsc").read_text()), TRADES_SCHEMA)
        == []
    )
