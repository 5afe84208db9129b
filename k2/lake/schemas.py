"""The Iceberg tables K2 lands into: names, schemas, partitioning, sort orders.

Pure spec objects (no catalog, no I/O). Field ids are explicit and numbered in
schema order, which is also what ``Catalog.create_table`` assigns, so the ids here
are the ids in the lake. Types mirror the Avro contracts in ``k2/avro`` exactly:

* ``decimal(18,6)`` -> ``DecimalType(18, 6)`` (exact, never a float);
* ``timestamp-millis`` -> ``TimestamptzType`` (an instant, UTC, microseconds);
* ``int`` -> ``IntegerType``, ``long`` -> ``LongType``, ``string`` -> ``StringType``;
* a field is optional exactly where the Avro type is a union with ``null``.

Every table also carries its Kafka position (lineage), which is what makes the
exactly-once bookkeeping in :mod:`k2.lake.offsets` checkable row by row.

``reference_data.companies`` stores ``start_date``/``end_date`` as ``DateType``
although the contract carries ISO ``YYYY-MM-DD`` strings: a quant filters
``end_date IS NULL OR end_date > d`` on dates, and the parse happens once, at
landing (validation rejects unparseable dates before they get there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

__all__ = [
    "COMPANIES",
    "COMPANIES_SCHEMA",
    "COMPANY_VERSIONS",
    "COMPANY_VERSIONS_SCHEMA",
    "MARKET_DATA",
    "NAMESPACES",
    "QUOTES",
    "QUOTES_SCHEMA",
    "REDRIVES",
    "REDRIVES_SCHEMA",
    "REFERENCE_DATA",
    "REJECTS",
    "REJECTS_SCHEMA",
    "REQUIRED_PROPERTIES",
    "SEQUENCE_GAPS",
    "SEQUENCE_GAPS_SCHEMA",
    "STREAMING_PROPERTIES",
    "TABLES",
    "TABLE_PROPERTIES",
    "TRADES",
    "TRADES_SCHEMA",
    "SourcePosition",
    "TableDef",
]

# Namespaces and table identifiers: the one place they are spelled.
MARKET_DATA = "market_data"
REFERENCE_DATA = "reference_data"
NAMESPACES: tuple[str, ...] = (MARKET_DATA, REFERENCE_DATA)

TRADES = f"{MARKET_DATA}.trades"
QUOTES = f"{MARKET_DATA}.quotes"
REJECTS = f"{MARKET_DATA}.rejects"
COMPANIES = f"{REFERENCE_DATA}.companies"
COMPANY_VERSIONS = f"{REFERENCE_DATA}.company_versions"
SEQUENCE_GAPS = f"{MARKET_DATA}.sequence_gaps"
REDRIVES = f"{MARKET_DATA}.redrives"

REQUIRED_PROPERTIES: Mapping[str, str] = {
    # pyiceberg (>= 0.10) retries a conflicting commit by itself, rebasing the same rows
    # and the same snapshot summary onto the new head. For K2 that would land rows the
    # other commit may already hold and record stale offsets (dropping the other
    # commit's marks): K2 must re-read the offsets and re-filter instead, so the writer
    # does the retrying and pyiceberg must not. Enforced on existing tables too.
    "commit.retry.num-retries": "0",
}
"""Table properties exactly-once depends on; :func:`k2.lake.tables.ensure_table` enforces them."""

STREAMING_PROPERTIES: Mapping[str, str] = {
    # Every commit writes a manifest, and every manifest list names all the live ones: merged
    # (pyiceberg's merge append), the list a commit writes stays short however long the sink
    # has run.
    "commit.manifest-merge.enabled": "true",
    # A merge reads every manifest of its bin and writes them again as one, inside the commit
    # that triggers it (0.2-0.4 ms per data file it lists, in pyiceberg). pyiceberg's defaults
    # (bins of 8 MiB, merged from 100 manifests) make that bin the day's one merged manifest
    # (~0.4 KiB per data file, ~5,500 files an hour per table at a 1 s flush) plus 100 small
    # ones, so every 100th commit cost more as the day went on, and once a merged manifest
    # nears its bin's size it is rewritten by commit after commit (a small manifest weighs
    # ~5 KiB, mostly header: the bins that fill it hold a few each; seen at 256 KiB). Bins of
    # 64 KiB from 4 bound what any commit rewrites to ~150 data files, and a full manifest is
    # never read again (`bench/commit_history.py`, 700 commits: p99 0.26 s against 0.36 s at 256 KiB from 10).
    "commit.manifest.target-size-bytes": str(64 * 1024),
    "commit.manifest.min-count-to-merge": "4",
}
"""Properties K2 sets on a table that does not set them itself (a table's own choice is left alone)."""

TABLE_PROPERTIES: Mapping[str, str] = {
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    # A streaming sink commits every few seconds: keep the last 100 metadata.json files, not all.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
    **STREAMING_PROPERTIES,
    **REQUIRED_PROPERTIES,
}
"""Properties of a table K2 creates.

Afterwards :data:`REQUIRED_PROPERTIES` are enforced and :data:`STREAMING_PROPERTIES` set where absent."""

PRICE = DecimalType(18, 6)

_KAFKA_PARTITION_DOC = "Kafka partition the event was read from (lineage)."
_KAFKA_OFFSET_DOC = "Kafka offset of the event in its partition (lineage, exactly-once key)."

TRADES_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "company_id", IntegerType(), required=True),
    NestedField(3, "exchange", StringType(), required=True),
    NestedField(4, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(5, "price", PRICE, required=True),
    NestedField(6, "volume", LongType(), required=True),
    NestedField(7, "qualifiers", IntegerType(), required=True),
    NestedField(8, "venue", StringType(), required=True),
    NestedField(9, "buyer_id", StringType(), required=False),
    NestedField(10, "ingestion_timestamp", TimestamptzType(), required=True),
    NestedField(11, "sequence_number", LongType(), required=False),
    NestedField(12, "kafka_partition", IntegerType(), required=True, doc=_KAFKA_PARTITION_DOC),
    NestedField(13, "kafka_offset", LongType(), required=True, doc=_KAFKA_OFFSET_DOC),
)

QUOTES_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "company_id", IntegerType(), required=True),
    NestedField(3, "exchange", StringType(), required=True),
    NestedField(4, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(5, "bid_price", PRICE, required=True),
    NestedField(6, "bid_volume", LongType(), required=True),
    NestedField(7, "ask_price", PRICE, required=True),
    NestedField(8, "ask_volume", LongType(), required=True),
    NestedField(9, "ingestion_timestamp", TimestamptzType(), required=True),
    NestedField(10, "sequence_number", LongType(), required=False),
    NestedField(11, "kafka_partition", IntegerType(), required=True, doc=_KAFKA_PARTITION_DOC),
    NestedField(12, "kafka_offset", LongType(), required=True, doc=_KAFKA_OFFSET_DOC),
)

COMPANIES_SCHEMA = Schema(
    NestedField(1, "company_id", IntegerType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    NestedField(3, "company_name", StringType(), required=True),
    NestedField(4, "isin", StringType(), required=True),
    NestedField(5, "start_date", DateType(), required=True, doc="First listing date."),
    NestedField(6, "end_date", DateType(), required=False, doc="Delisting date; null while listed."),
    NestedField(7, "kafka_partition", IntegerType(), required=True, doc=_KAFKA_PARTITION_DOC),
    NestedField(8, "kafka_offset", LongType(), required=True, doc=_KAFKA_OFFSET_DOC),
    NestedField(9, "updated_at", TimestamptzType(), required=True, doc="When K2 landed this version of the row."),
    identifier_field_ids=[1],
)

#: Every version of every company, in Kafka order: the history the upserted ``companies`` table
#: forgets. Each reference-data offset lands here exactly once (or in the rejects), which is
#: what lets ``k2 audit`` prove the reference topic like the market topics, and what a quant
#: joins "as of" a date. Same columns as ``companies``, without its identifier field.
COMPANY_VERSIONS_SCHEMA = Schema(*COMPANIES_SCHEMA.fields)

REJECTS_SCHEMA = Schema(
    NestedField(1, "source_topic", StringType(), required=True),
    NestedField(2, "source_partition", IntegerType(), required=True),
    NestedField(3, "source_offset", LongType(), required=True),
    NestedField(4, "reason", StringType(), required=True, doc="Stable reason code, e.g. undecodable, invalid_value."),
    NestedField(5, "detail", StringType(), required=False, doc="Human-readable explanation."),
    NestedField(6, "schema_id", IntegerType(), required=False, doc="Registry schema id from the header, if framed."),
    NestedField(7, "key", BinaryType(), required=False, doc="Raw Kafka key bytes."),
    NestedField(8, "value", BinaryType(), required=False, doc="Raw Kafka value bytes."),
    NestedField(9, "rejected_at", TimestamptzType(), required=True),
    NestedField(10, "worker_id", StringType(), required=False, doc="Worker that rejected the record."),
    NestedField(
        11,
        "headers",
        ListType(
            12,
            StructType(
                NestedField(13, "key", StringType(), required=True),
                NestedField(14, "value", BinaryType(), required=False),
            ),
            element_required=True,
        ),
        required=False,
        doc="The record's own Kafka headers, in order (what `k2 rejects replay` sends again).",
    ),
)

SEQUENCE_GAPS_SCHEMA = Schema(
    NestedField(1, "source_topic", StringType(), required=True, doc="Topic of the event that revealed the gap."),
    NestedField(2, "source_partition", IntegerType(), required=True),
    NestedField(3, "source_offset", LongType(), required=True, doc="Offset of the revealing event (exactly-once key)."),
    NestedField(4, "exchange", StringType(), required=True),
    NestedField(5, "symbol", StringType(), required=True),
    NestedField(6, "expected", LongType(), required=True, doc="First missing sequence number."),
    NestedField(7, "received", LongType(), required=True, doc="Sequence number that arrived instead."),
    NestedField(8, "missing", LongType(), required=True, doc="How many numbers are missing: received - expected."),
    NestedField(9, "severity", StringType(), required=True, doc="small (fewer than 10 missing) or large."),
    NestedField(10, "event_time", TimestamptzType(), required=True, doc="Exchange time of the revealing event."),
    NestedField(11, "detected_at", TimestamptzType(), required=True, doc="When K2 found the gap."),
)


#: What ``k2 rejects replay`` did (:mod:`k2.lake.redrive`): per run an ``intent`` (the end offsets of
#: the partitions it writes to) and a ``done``, and between them a ``link`` per reject sent again,
#: from its original position to the new one. Written by the command, never by a worker.
REDRIVES_SCHEMA = Schema(
    NestedField(1, "run_id", StringType(), required=True),
    NestedField(2, "kind", StringType(), required=True, doc="intent, link or done."),
    NestedField(3, "source_topic", StringType(), required=False, doc="Where the reject came from (links)."),
    NestedField(4, "source_partition", IntegerType(), required=False),
    NestedField(5, "source_offset", LongType(), required=False),
    NestedField(6, "to_partition", IntegerType(), required=False, doc="Where it was sent again (links)."),
    NestedField(7, "to_offset", LongType(), required=False),
    NestedField(8, "reason", StringType(), required=False, doc="The reject's reason when it was sent again."),
    NestedField(9, "at", TimestamptzType(), required=True),
    NestedField(10, "detail", StringType(), required=False, doc="An intent's end offsets, as JSON."),
)


def _by_time(schema: Schema, time_column: str, *then: str) -> tuple[PartitionSpec, SortOrder]:
    """Day partitions on ``time_column``; sorted by it, then ``then``, ascending, nulls last."""
    time_id = schema.find_field(time_column).field_id
    spec = PartitionSpec(
        PartitionField(source_id=time_id, field_id=1000, transform=DayTransform(), name=f"{time_column}_day")
    )
    order = SortOrder(
        *(
            SortField(
                source_id=schema.find_field(name).field_id,
                transform=IdentityTransform(),
                direction=SortDirection.ASC,
                null_order=NullOrder.NULLS_LAST,
            )
            for name in (time_column, *then)
        )
    )
    return spec, order


@dataclass(frozen=True)
class SourcePosition:
    """The columns that give a row's Kafka position.

    ``topic_column`` is None when the table is fed by one topic (the writer knows it);
    the rejects table is fed by every topic and records it per row.
    """

    partition_column: str
    offset_column: str
    topic_column: str | None = None


KAFKA_POSITION = SourcePosition("kafka_partition", "kafka_offset")
REJECT_POSITION = SourcePosition("source_partition", "source_offset", topic_column="source_topic")
#: A gap row carries the position of the event that revealed it (trades or quotes).
GAP_POSITION = SourcePosition("source_partition", "source_offset", topic_column="source_topic")


@dataclass(frozen=True)
class TableDef:
    """Everything needed to create one K2 table and to land rows into it."""

    name: str
    schema: Schema
    position: SourcePosition
    partition_spec: PartitionSpec = UNPARTITIONED_PARTITION_SPEC
    sort_order: SortOrder = UNSORTED_SORT_ORDER
    properties: Mapping[str, str] = field(default_factory=lambda: dict(TABLE_PROPERTIES))
    upsert_keys: tuple[str, ...] = ()
    """Non-empty for tables that keep one current row per key (upsert) instead of appending."""

    @property
    def namespace(self) -> str:
        return self.name.split(".", 1)[0]


_trade_spec, _trade_order = _by_time(TRADES_SCHEMA, "exchange_timestamp", "sequence_number")
_quote_spec, _quote_order = _by_time(QUOTES_SCHEMA, "exchange_timestamp", "sequence_number")
_reject_spec, _reject_order = _by_time(
    REJECTS_SCHEMA, "rejected_at", "source_topic", "source_partition", "source_offset"
)
_gap_spec, _gap_order = _by_time(SEQUENCE_GAPS_SCHEMA, "event_time", "symbol")

TABLES: Mapping[str, TableDef] = {
    t.name: t
    for t in (
        TableDef(TRADES, TRADES_SCHEMA, KAFKA_POSITION, _trade_spec, _trade_order),
        TableDef(QUOTES, QUOTES_SCHEMA, KAFKA_POSITION, _quote_spec, _quote_order),
        TableDef(COMPANIES, COMPANIES_SCHEMA, KAFKA_POSITION, upsert_keys=("company_id",)),
        TableDef(COMPANY_VERSIONS, COMPANY_VERSIONS_SCHEMA, KAFKA_POSITION),
        TableDef(REJECTS, REJECTS_SCHEMA, REJECT_POSITION, _reject_spec, _reject_order),
        TableDef(SEQUENCE_GAPS, SEQUENCE_GAPS_SCHEMA, GAP_POSITION, _gap_spec, _gap_order),
        TableDef(REDRIVES, REDRIVES_SCHEMA, REJECT_POSITION),
    )
}
"""Every K2 table by its identifier, in creation order."""
