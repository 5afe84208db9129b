"""What each table's row must equal, given the source records of its span. Pure.

* ``market_data.trades``, ``market_data.quotes``, ``reference_data.company_versions`` and
  ``reference_data.companies``: every column against the writer schema's field of the same
  name, evolved columns included; a column the writer schema lacks must be null, a field the
  table lacks must be null in the source (else its value was dropped); ISO date strings
  against the companies' ``date`` columns. Not compared: the lineage (it is the join key)
  and ``updated_at`` (when K2 landed the row). A row whose record K2 cannot decode differs
  in ``(record)``.
* ``market_data.rejects``: ``key``, ``value`` and ``headers`` byte for byte, and
  ``schema_id`` against the frame's header. Not compared: ``reason`` and ``detail`` (why a
  valid record was rejected, a duplicate say, depends on the feed's history).
* ``market_data.sequence_gaps``: ``exchange``, ``symbol``, ``received`` and ``event_time``
  against the revealing event's ``exchange``, ``symbol``, ``sequence_number`` and
  ``exchange_timestamp``; ``missing`` = ``received - expected``; ``severity`` from it. Not
  compared: ``expected`` itself (the tracker's state) and ``detected_at``.

Rows whose offset holds no record in the span read are counted, not compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.audit.values_compare import Diff, align, compare_columns
from k2.audit.values_decode import OFFSET, Decoded, Group, Resolve, decode_block, schema_ids
from k2.audit.values_report import ValuesReport
from k2.audit.values_source import SourceRecords
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, SEQUENCE_GAPS, TABLES, TRADES
from k2.sequence.classify import LARGE_GAP_MIN
from k2.settings import Settings

__all__ = ["NOT_IN_KAFKA", "RECORD", "Feed", "compare_bucket", "feeds", "offset_span"]

RECORD = "(record)"
"""The column a row differs in when its source record is not one K2 can decode."""
NOT_IN_KAFKA = "no record at its offset in Kafka (compacted away, or never committed)"
_LANDED = "landed as a row"
_LINEAGE = frozenset({"kafka_partition", "kafka_offset"})
_NOT_FROM_SOURCE: dict[str, frozenset[str]] = {
    COMPANIES: _LINEAGE | {"updated_at"},
    COMPANY_VERSIONS: _LINEAGE | {"updated_at"},
}
#: A gap row's column -> the revealing event's field it must equal.
_GAP_FIELDS = {
    "exchange": "exchange",
    "symbol": "symbol",
    "received": "sequence_number",
    "event_time": "exchange_timestamp",
}


@dataclass(frozen=True)
class Feed:
    """A source topic and the tables its records land in."""

    topic: str
    rows: tuple[str, ...]
    """Tables whose rows are the decoded records."""
    gaps: bool

    @property
    def tables(self) -> tuple[str, ...]:
        return (*self.rows, REJECTS, *((SEQUENCE_GAPS,) if self.gaps else ()))


def feeds(settings: Settings) -> list[Feed]:
    """K2's three source topics and their tables."""
    return [
        Feed(settings.trades_topic, (TRADES,), gaps=True),
        Feed(settings.quotes_topic, (QUOTES,), gaps=True),
        Feed(settings.reference_topic, (COMPANY_VERSIONS, COMPANIES), gaps=False),
    ]


def _offsets(name: str, rows: pa.Table) -> pa.Array:
    return rows.column(TABLES[name].position.offset_column).combine_chunks().cast(pa.int64())


def offset_span(lake: Mapping[str, pa.Table]) -> tuple[int, int]:
    """The lowest and highest offset of any row of the bucket's tables (each non-empty)."""
    spans = [pc.min_max(_offsets(n, t)) for n, t in lake.items()]
    return min(s["min"].as_py() for s in spans), max(s["max"].as_py() for s in spans)


def compare_bucket(
    feed: Feed,
    partition: int,
    lake: Mapping[str, pa.Table],
    records: SourceRecords,
    resolve: Resolve,
    report: ValuesReport,
) -> None:
    """Compare one bucket's rows (each table's, in offset order) with the records of their span, into ``report``."""
    decoded_tables = [n for n in lake if n != REJECTS]
    needed = (
        np.unique(np.concatenate([_offsets(n, lake[n]).to_numpy() for n in decoded_tables]))
        if decoded_tables
        else np.zeros(0, np.int64)
    )
    wanted = np.isin(records.offsets, needed)
    if wanted.all():
        decoded = decode_block(records.offsets, records.values, resolve)
    else:
        index = np.flatnonzero(wanted)
        decoded = decode_block(records.offsets[index], [records.values[i] for i in index.tolist()], resolve)
    for group in decoded.groups:
        for name, why in group.plan.skipped:
            report.not_compared.add((feed.topic, group.plan.schema_id, name, why))
    where = (feed.topic, partition)
    for name, rows in lake.items():
        if name == REJECTS:
            diffs = _reject_diffs(rows, records, report, name, where)
        else:
            diffs = _row_diffs(name, rows, decoded, report, where)
        for diff in diffs:
            report.add(name, feed.topic, partition, diff)


def _row_diffs(
    name: str, rows: pa.Table, decoded: Decoded, report: ValuesReport, where: tuple[str, int]
) -> Iterator[Diff]:
    """Diffs of a table whose rows are (or derive from) decoded records: per writer schema, then the rest."""
    offsets = _offsets(name, rows)
    claimed = np.zeros(rows.num_rows, dtype=bool)
    compared = 0
    for group in decoded.groups:
        positions = align(offsets, group.table[OFFSET])
        mask = positions.is_valid()
        matched = int(pc.sum(mask).as_py() or 0)
        if not matched:
            continue
        claimed |= mask.to_numpy(zero_copy_only=False)
        compared += matched
        lake = rows.filter(mask)
        yield from _group_diffs(name, lake, group.table.take(positions.drop_null()), group)
    rest = ~claimed
    if rest.any():
        left = offsets.filter(pa.array(rest))
        positions = align(left, decoded.undecodable[OFFSET])
        bad = positions.is_valid()
        if pc.any(bad).as_py():
            why = decoded.undecodable["why"].take(positions.drop_null())
            kept = left.filter(bad)
            yield Diff(
                RECORD,
                kept,
                pa.array([_LANDED] * len(kept)),
                why.combine_chunks() if isinstance(why, pa.ChunkedArray) else why,
            )
        report.not_compared_rows(name, *where, NOT_IN_KAFKA, left.filter(pc.invert(bad)).to_numpy())
    report.compared[name] = report.compared.get(name, 0) + compared


def _group_diffs(name: str, lake: pa.Table, source: pa.Table, group: Group) -> Iterator[Diff]:
    offsets = _offsets(name, lake)
    fields = {f.name: source.column(f.name).combine_chunks() for f in group.plan.fields}
    if name != SEQUENCE_GAPS:
        yield from compare_columns(lake, fields, offsets, ignore=_NOT_FROM_SOURCE.get(name, _LINEAGE))
        return
    expected = {column: fields.get(field_name) for column, field_name in _GAP_FIELDS.items()}
    missing = pc.subtract(lake.column("received"), lake.column("expected")).combine_chunks()
    derived = {
        "missing": missing,
        "severity": pc.if_else(pc.greater_equal(missing, LARGE_GAP_MIN), "large", "small"),
    }
    checked = lake.select([*_GAP_FIELDS, *derived])
    given = {k: v for k, v in {**expected, **derived}.items() if v is not None}
    yield from compare_columns(checked, given, offsets)


def _reject_diffs(
    rows: pa.Table, records: SourceRecords, report: ValuesReport, name: str, where: tuple[str, int]
) -> Iterator[Diff]:
    """A reject keeps its record's key, value and headers byte for byte, and the frame's schema id."""
    offsets = _offsets(name, rows)
    positions = align(offsets, pa.array(records.offsets, pa.int64()))
    found = positions.is_valid()
    report.not_compared_rows(name, *where, NOT_IN_KAFKA, offsets.filter(pc.invert(found)).to_numpy())
    lake = rows.filter(found)
    at = positions.drop_null().to_pylist()
    report.compared[name] = report.compared.get(name, 0) + len(at)
    if not at:
        return
    values = [records.values[i] for i in at]
    ids = schema_ids(values)
    headers_type = lake.schema.field("headers").type
    source = {
        "key": pa.array([records.keys[i] for i in at], pa.large_binary()),
        "value": pa.array(values, pa.large_binary()),
        "schema_id": pa.array(ids, pa.int64(), mask=ids < 0),
        "headers": pa.array([_headers(records.headers[i]) for i in at], headers_type),
    }
    kept = _offsets(name, lake)
    bytes_and_id = ["key", "value", "schema_id"]
    yield from compare_columns(lake.select(bytes_and_id), {c: source[c] for c in bytes_and_id}, kept)
    # Kafka has no "null headers", only none; pyiceberg writes a null list as an empty one.
    lake_headers = lake.column("headers").to_pylist()
    same = [(a or []) == (b or []) for a, b in zip(lake_headers, source["headers"].to_pylist(), strict=True)]
    if not all(same):
        mask = pa.array([not s for s in same])
        yield Diff(
            "headers",
            kept.filter(mask),
            lake.column("headers").combine_chunks().filter(mask),
            source["headers"].filter(mask),
        )


def _headers(headers: list[tuple[str, bytes | None]] | None) -> list[dict[str, object]]:
    """Kafka's headers as the rejects table holds them: a list of key and value (empty for none)."""
    return [{"key": k, "value": v} for k, v in headers or ()]
