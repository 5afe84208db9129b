"""The Iceberg table definitions against the Avro contracts they land."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    TimestamptzType,
)

from k2.lake.evolution import avro_field_to_iceberg
from k2.lake.schemas import (
    COMPANIES,
    COMPANIES_SCHEMA,
    NAMESPACES,
    QUOTES,
    QUOTES_SCHEMA,
    REJECTS,
    TABLES,
    TRADES,
    TRADES_SCHEMA,
)


def contract(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(resources.files("k2.avro").joinpath(f"{name}.avsc").read_text())
    return parsed


def columns(schema: Schema) -> list[tuple[str, Any, bool]]:
    return [(f.name, f.field_type, f.required) for f in schema.fields]


@pytest.mark.parametrize(("avsc", "schema"), [("trade", TRADES_SCHEMA), ("quote", QUOTES_SCHEMA)])
def test_market_tables_mirror_the_contract_then_lineage(avsc: str, schema: Schema) -> None:
    fields = contract(avsc)["fields"]
    expected = [(f.name, f.field_type, f.required) for f in (avro_field_to_iceberg(f, 1) for f in fields)]
    expected += [("kafka_partition", IntegerType(), True), ("kafka_offset", LongType(), True)]
    assert columns(schema) == expected


def test_exact_types_of_a_trade() -> None:
    by_name = {f.name: f for f in TRADES_SCHEMA.fields}
    assert by_name["price"].field_type == DecimalType(18, 6)
    assert by_name["exchange_timestamp"].field_type == TimestamptzType()
    assert by_name["ingestion_timestamp"].field_type == TimestamptzType()
    assert by_name["qualifiers"].field_type == IntegerType()
    assert by_name["volume"].field_type == LongType()
    assert [f.name for f in TRADES_SCHEMA.fields if not f.required] == ["buyer_id", "sequence_number"]
    assert [f.name for f in QUOTES_SCHEMA.fields if not f.required] == ["sequence_number"]


def test_companies_store_dates_and_key_on_company_id() -> None:
    fields = contract("reference_data")["fields"]
    got = {f.name: f for f in COMPANIES_SCHEMA.fields}
    for f in fields:
        assert got[f["name"]].required == (not isinstance(f["type"], list))
    assert got["start_date"].field_type == DateType()
    assert got["end_date"].field_type == DateType()
    assert got["company_id"].field_type == IntegerType()
    assert got["updated_at"].field_type == TimestamptzType()
    assert COMPANIES_SCHEMA.identifier_field_names() == {"company_id"}
    assert TABLES[COMPANIES].upsert_keys == ("company_id",)
    assert TABLES[COMPANIES].partition_spec.is_unpartitioned()


def test_rejects_keep_raw_bytes() -> None:
    schema = TABLES[REJECTS].schema
    got = {f.name: (f.field_type, f.required) for f in schema.fields}
    assert got["key"] == (BinaryType(), False)
    assert got["value"] == (BinaryType(), False)
    assert got["schema_id"] == (IntegerType(), False)
    assert got["source_topic"] == (StringType(), True)
    assert got["source_offset"] == (LongType(), True)
    assert got["rejected_at"] == (TimestamptzType(), True)


@pytest.mark.parametrize("table_def", list(TABLES.values()), ids=list(TABLES))
def test_field_ids_are_explicit_and_in_order(table_def: Any) -> None:
    assert [f.field_id for f in table_def.schema.fields] == list(range(1, len(table_def.schema.fields) + 1))
    assert dict(table_def.properties) == {
        "write.format.default": "parquet",
        "write.parquet.compression-codec": "zstd",
        "write.metadata.delete-after-commit.enabled": "true",
        "write.metadata.previous-versions-max": "100",
        "commit.manifest-merge.enabled": "true",  # a commit's manifest list stays short after weeks
        "commit.manifest.target-size-bytes": "65536",  # and a merge never rewrites more than 64 KiB
        "commit.manifest.min-count-to-merge": "4",
        "commit.retry.num-retries": "0",  # K2 retries with fresh offsets; pyiceberg must not replay stale ones
    }


@pytest.mark.parametrize(
    ("name", "time_column"), [(TRADES, "exchange_timestamp"), (QUOTES, "exchange_timestamp"), (REJECTS, "rejected_at")]
)
def test_day_partitions(name: str, time_column: str) -> None:
    table_def = TABLES[name]
    (field,) = table_def.partition_spec.fields
    assert isinstance(field.transform, DayTransform)
    assert table_def.schema.find_column_name(field.source_id) == time_column


@pytest.mark.parametrize("name", [TRADES, QUOTES])
def test_market_sort_order(name: str) -> None:
    table_def = TABLES[name]
    sort = [(table_def.schema.find_column_name(f.source_id), f) for f in table_def.sort_order.fields]
    assert [n for n, _ in sort] == ["exchange_timestamp", "sequence_number"]
    for _, f in sort:
        assert isinstance(f.transform, IdentityTransform)
        assert f.direction == SortDirection.ASC
        assert f.null_order == NullOrder.NULLS_LAST


def test_names_in_one_place() -> None:
    assert set(TABLES) == {
        "market_data.trades",
        "market_data.quotes",
        "market_data.rejects",
        "market_data.sequence_gaps",
        "market_data.redrives",
        "reference_data.companies",
        "reference_data.company_versions",
    }
    assert NAMESPACES == ("market_data", "reference_data")
    assert {t.namespace for t in TABLES.values()} == set(NAMESPACES)
