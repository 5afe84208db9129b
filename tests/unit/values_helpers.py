"""Builders for the value-audit tests: framed source records, and the rows K2's own definition makes of them.

The rows are made by K2's per-record path (``k2.avro.codec.decode`` and ``k2.lake.arrow``),
the records decoded by the audit's own reader: a clean comparison is then the two agreeing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from k2.audit.values_decode import WriterPlan
from k2.audit.values_report import ValuesReport
from k2.audit.values_rows import Feed, compare_bucket
from k2.audit.values_source import SourceRecords
from k2.avro.codec import HEADER_SIZE, decode, encode, parse_schema, stored_schema_id
from k2.avro.schemas import CONTRACTS
from k2.lake.arrow import arrow_schema, companies_to_arrow, events_to_arrow, gaps_to_arrow, rejects_to_arrow
from k2.lake.records import BufferedEvent, GapRecord, RejectRecord
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, TRADES

from .lake_helpers import REFERENCE_TOPIC, T0, TRADES_TOPIC

V1, V2, REF = 1, 2, 3
TRADE_V1 = CONTRACTS["trade"].schema_str
_tree = json.loads(TRADE_V1)
_tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None})
TRADE_V2 = json.dumps(_tree)
SCHEMAS = {V1: TRADE_V1, V2: TRADE_V2, REF: CONTRACTS["reference_data"].schema_str}
PARSED = {i: parse_schema(s) for i, s in SCHEMAS.items()}
PLANS = {i: WriterPlan.of(i, s) for i, s in SCHEMAS.items()}
TRADES_FEED = Feed(TRADES_TOPIC, (TRADES,), gaps=True)
REFERENCE_FEED = Feed(REFERENCE_TOPIC, (COMPANY_VERSIONS, COMPANIES), gaps=False)
#: The trades table after v2 added its optional column.
EVOLVED = arrow_schema(TRADES).append(pa.field("trade_id", pa.large_string()))


def resolve(schema_id: int) -> WriterPlan | str:
    return PLANS.get(schema_id) or f"unknown_schema_id: schema id {schema_id} is not in the registry"


def framed(schema_id: int, record: Mapping[str, Any]) -> bytes:
    return encode(schema_id, PARSED[schema_id], record)


def records(
    values: Sequence[bytes | None],
    first: int = 0,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes | None]] | None] | None = None,
) -> SourceRecords:
    """Consecutive source records from offset ``first``."""
    n = len(values)
    return SourceRecords(
        np.arange(first, first + n, dtype=np.int64),
        list(keys) if keys is not None else [b"k%d" % i for i in range(n)],
        list(values),
        list(headers) if headers is not None else [None] * n,
    )


def events(source: SourceRecords, partition: int = 0, topic: str = TRADES_TOPIC) -> list[BufferedEvent]:
    """The source records decoded as K2's per-record path decodes them."""
    out = []
    for offset, value in zip(source.offsets.tolist(), source.values, strict=True):
        assert value is not None
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        out.append(BufferedEvent(topic, partition, offset, decode(value, PARSED[schema_id], offset=HEADER_SIZE)))
    return out


def trade_rows(source: SourceRecords, schema: pa.Schema = EVOLVED, partition: int = 0) -> pa.Table:
    """The trades rows K2 lands for ``source``, in offset order."""
    return events_to_arrow(TRADES, events(source, partition), schema, sort=False)


def company_rows(source: SourceRecords) -> pa.Table:
    """The rows K2 lands in ``reference_data.company_versions`` (and, the latest per company, ``companies``)."""
    return companies_to_arrow(events(source, topic=REFERENCE_TOPIC), T0, sort=False)


def reject_rows(source: SourceRecords, partition: int = 0, topic: str = TRADES_TOPIC) -> pa.Table:
    rejected = [
        RejectRecord(topic, partition, o, "undecodable", "test", T0, stored_schema_id(v), k, v, "w", tuple(h or ()))
        for o, k, v, h in zip(source.offsets.tolist(), source.keys, source.values, source.headers, strict=True)
    ]
    return rejects_to_arrow(rejected).sort_by("source_offset")


def gap_rows(gaps: Sequence[GapRecord]) -> pa.Table:
    return gaps_to_arrow(gaps).sort_by("source_offset")


def replace(rows: pa.Table, column: str, at: Sequence[int], value: Any) -> pa.Table:
    """``rows`` with ``column`` set to ``value`` at row indices ``at``."""
    values = rows.column(column).to_pylist()
    for i in at:
        values[i] = value(values[i]) if callable(value) else value
    index = rows.column_names.index(column)
    return rows.set_column(index, rows.schema.field(column), pa.array(values, rows.schema.field(column).type))


def compare(
    lake: Mapping[str, pa.Table], source: SourceRecords, feed: Feed = TRADES_FEED, partition: int = 0
) -> ValuesReport:
    report = ValuesReport()
    compare_bucket(feed, partition, lake, source, resolve, report)
    return report
