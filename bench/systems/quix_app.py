"""The Quix Streams application the benchmark runs: K2's Avro topics into Iceberg with Quix's IcebergSink.

Run by the Quix virtualenv's python (never K2's: Quix pins its own dependencies), as

    quix-venv/bin/python bench/systems/quix_app.py CONFIG.json

where CONFIG.json is written by :mod:`bench.systems.quix` (keys: see :class:`Config`).
Standard library, quixstreams and pyiceberg only: this file must not import ``k2``.

What it does, the way a Quix user would:

* one ``Application`` (one consumer group) with one ``StreamingDataFrame`` per source topic;
* values decoded by Quix's own ``AvroDeserializer`` given a ``SchemaRegistryClientConfig``:
  Quix hands the bytes to confluent-kafka's schema-registry ``AvroDeserializer``, which
  reads the Confluent frame (magic byte, schema id), fetches the writer schema by id from
  the registry (``/schemas/ids/{id}``, which Apicurio's ccompat API answers), caches it and
  decodes with fastavro (decimals as ``Decimal``, timestamps as UTC ``datetime``);
* each row gets the Kafka ``kafka_partition`` and ``kafka_offset`` it came from, so the
  benchmark can count missing and doubled events;
* sunk with Quix's ``IcebergSink`` unchanged except for its catalog: Quix 3.28 only knows
  AWS Glue, so :class:`SqlIcebergSink` gives it pyiceberg's ``SqlCatalog`` on a SQLite
  file instead. Quix flushes the sink (one Iceberg append per topic-partition batch) at
  every checkpoint, then commits the consumer offsets: at-least-once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    DecimalType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)
from quixstreams import Application, message_context
from quixstreams.models.serializers.avro import AvroDeserializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig
from quixstreams.sinks.base import BatchingSink
from quixstreams.sinks.community.iceberg import BaseIcebergConfig, IcebergSink

logger = logging.getLogger("bench.quix_app")

PRICE = DecimalType(18, 6)

#: Columns every Quix IcebergSink row has (the Kafka timestamp, naive, and the key), first.
_QUIX_COLUMNS = (
    NestedField(1, "_timestamp", TimestampType(), required=False),
    NestedField(2, "_key", StringType(), required=False),
)

# K2's columns and types (k2/lake/schemas.py), so a query reads the same thing from either
# lake; optional, since Quix appends whatever its batch holds. The sink's schema union with
# each batch's pyarrow-inferred types widens the int columns (company_id, qualifiers,
# kafka_partition) to long on the first write; decimals and timestamps stay as given.
TRADE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("symbol", StringType()),
    ("company_id", IntegerType()),
    ("exchange", StringType()),
    ("exchange_timestamp", TimestamptzType()),
    ("price", PRICE),
    ("volume", LongType()),
    ("qualifiers", IntegerType()),
    ("venue", StringType()),
    ("buyer_id", StringType()),
    ("ingestion_timestamp", TimestamptzType()),
    ("sequence_number", LongType()),
    ("kafka_partition", IntegerType()),
    ("kafka_offset", LongType()),
)
QUOTE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("symbol", StringType()),
    ("company_id", IntegerType()),
    ("exchange", StringType()),
    ("exchange_timestamp", TimestamptzType()),
    ("bid_price", PRICE),
    ("bid_volume", LongType()),
    ("ask_price", PRICE),
    ("ask_volume", LongType()),
    ("ingestion_timestamp", TimestamptzType()),
    ("sequence_number", LongType()),
    ("kafka_partition", IntegerType()),
    ("kafka_offset", LongType()),
)


@dataclass(frozen=True)
class Config:
    """What the harness decides; one JSON object on disk so the command line stays short."""

    broker: str
    registry_url: str
    consumer_group: str
    #: source topic -> Iceberg table identifier ("namespace.table")
    tables: dict[str, str]
    #: source topic -> "trades" or "quotes" (which K2 contract, hence which columns)
    kinds: dict[str, str]
    catalog_name: str
    catalog_uri: str
    warehouse: str
    state_dir: str
    commit_interval_s: float
    #: "quix": the sink's own default partitioning, identity(_key) + day(_timestamp);
    #: "k2": day(exchange_timestamp), like K2's tables.
    partitioning: str = "quix"
    processing_guarantee: str = "at-least-once"
    auto_offset_reset: str = "earliest"
    loglevel: str = "INFO"
    #: extra librdkafka consumer settings
    consumer_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Config:
        return cls(**json.loads(path.read_text()))


def table_schema(kind: str) -> Schema:
    """Quix's two columns, then K2's columns of ``kind`` ("trades" or "quotes")."""
    fields = {"trades": TRADE_FIELDS, "quotes": QUOTE_FIELDS}[kind]
    ours = [NestedField(i, name, typ, required=False) for i, (name, typ) in enumerate(fields, start=3)]
    return Schema(*_QUIX_COLUMNS, *ours)


def partition_spec(schema: Schema, partitioning: str) -> PartitionSpec | None:
    """None lets IcebergSink pick its default; "k2" is day(exchange_timestamp)."""
    if partitioning == "quix":
        return None
    if partitioning == "k2":
        source = schema.find_field("exchange_timestamp").field_id
        return PartitionSpec(
            PartitionField(source_id=source, field_id=1000, transform=DayTransform(), name="exchange_timestamp_day")
        )
    raise ValueError(f"partitioning must be 'quix' or 'k2', not {partitioning!r}")


class SqlIcebergSink(IcebergSink):
    """Quix's IcebergSink with pyiceberg's SqlCatalog in place of AWS Glue.

    ``IcebergSink.__init__`` builds a Glue catalog from its config (and would need boto3 and
    AWS); everything else it does (schema union, Parquet round trip, append, backpressure on
    a commit conflict) is kept by calling :class:`BatchingSink`'s constructor and setting
    the same attributes ``IcebergSink.__init__`` sets.
    """

    def __init__(
        self,
        table_name: str,
        catalog: SqlCatalog,
        location: str,
        schema: Schema,
        partition_spec: PartitionSpec | None,
    ) -> None:
        BatchingSink.__init__(self)
        self._iceberg_config = BaseIcebergConfig(location=location, auth={})
        self._table_name = table_name
        self._table = None
        self.data_catalog = catalog
        self._schema = schema
        self._partition_spec = (
            partition_spec if partition_spec is not None else self._get_default_partition_spec(schema)
        )


def prepare_row(value: dict[str, Any]) -> None:
    """Drop null fields and stamp the event with where it came from (Quix's message context).

    Nulls are dropped because IcebergSink lets pyarrow infer each batch's types from Python
    values: a batch in which every ``buyer_id`` is None (all of K2's sample) makes a
    ``pa.null()`` column, which Iceberg v2 refuses ("Null type is not supported") and the
    application stops. A key absent from every row of a batch is simply not written (the
    column is optional); present in some rows, the others get None from Quix itself.
    """
    for name in [name for name, item in value.items() if item is None]:
        del value[name]
    ctx = message_context()
    value["kafka_partition"] = ctx.partition
    value["kafka_offset"] = ctx.offset


def build(config: Config) -> Application:
    """The Application with one dataframe and one sink per source topic."""
    app = Application(
        broker_address=config.broker,
        consumer_group=config.consumer_group,
        auto_offset_reset=config.auto_offset_reset,  # type: ignore[arg-type]
        commit_interval=config.commit_interval_s,
        processing_guarantee=config.processing_guarantee,  # type: ignore[arg-type]
        state_dir=config.state_dir,
        loglevel=config.loglevel,  # type: ignore[arg-type]
        use_changelog_topics=False,
        auto_create_topics=False,
        consumer_extra_config=config.consumer_config or None,
    )
    registry = SchemaRegistryClientConfig(url=config.registry_url)
    catalog = SqlCatalog(config.catalog_name, uri=config.catalog_uri, warehouse=config.warehouse)
    for topic_name, table_name in config.tables.items():
        namespace = table_name.rsplit(".", 1)[0]
        catalog.create_namespace_if_not_exists(namespace)
        schema = table_schema(config.kinds[topic_name])
        topic = app.topic(
            topic_name,
            key_deserializer="bytes",
            value_deserializer=AvroDeserializer(schema_registry_client_config=registry),
        )
        sink = SqlIcebergSink(
            table_name,
            catalog,
            location=f"{config.warehouse.rstrip('/')}/{table_name.replace('.', '/')}",
            schema=schema,
            partition_spec=partition_spec(schema, config.partitioning),
        )
        app.dataframe(topic).update(prepare_row).sink(sink)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="JSON written by bench/systems/quix.py")
    args = parser.parse_args(argv)
    config = Config.load(args.config)
    app = build(config)
    app.run()  # stops on SIGTERM/SIGINT after a last checkpoint (Quix installs the handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
