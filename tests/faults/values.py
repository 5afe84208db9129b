"""Landed values against what was produced (:func:`check_values`): rows equal to the decoded source,
rejects carrying their source bytes. Missing and doubled offsets are the law's business (``law.py``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from tests.faults.deployment import Deployment
from tests.faults.lake import QUOTES, REJECTS, TRADES, reference_ledger, scan_rows
from tests.faults.ranges import position_ranges
from tests.faults.source import Position, Registry, SourceRecord

__all__ = ["ValueVerdict", "check_values"]


@dataclass
class ValueVerdict:
    """Landed values against what was produced: rows equal to the decoded source, rejects byte for byte."""

    checked_rows: int = 0
    checked_rejects: int = 0
    mismatched: dict[str, list[list[int]]] = field(default_factory=dict)
    good_rejected: dict[str, list[list[int]]] = field(default_factory=dict)
    bad_landed: dict[str, list[list[int]]] = field(default_factory=dict)
    reject_bytes_differ: dict[str, list[list[int]]] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    good_rejected_reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not (self.mismatched or self.good_rejected or self.bad_landed or self.reject_bytes_differ)


def _norm(value: Any) -> Any:
    """One comparable form for Avro and Arrow values: instants in microseconds, dates as ISO text."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1_000_000)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _diff(record: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in record.items():
        if name not in row:
            out.append(f"{name}: no such column (source {value!r})")
        elif _norm(value) != _norm(row[name]):
            out.append(f"{name}: lake {row[name]!r} != source {value!r}")
    return out


def check_values(
    dep: Deployment, source: Mapping[Position, SourceRecord], expectations: Mapping[Position, str] | None = None
) -> ValueVerdict:
    """Every landed row equal to its source record, every reject carrying its source bytes.

    What a source record must become is ``expectations[position]`` (``row``, ``reject`` or
    ``either``) where the scenario knows (the poison it made); otherwise ``row`` when it
    decodes cleanly with a schema of its topic's subject, ``reject`` when it does not.
    Missing and doubled positions are the law's business (:func:`check_law`), not this one's.

    Args:
        source: the committed source records below the ends (:func:`~tests.faults.source.read_topics`).
    """
    expectations = expectations or {}
    registry = Registry(dep.stack.schema_registry_url)
    catalog = dep.catalog()
    topic_of = {
        TRADES: dep.topics["trades"],
        QUOTES: dep.topics["quotes"],
        reference_ledger(dep): dep.topics["reference"],
    }
    rows: dict[Position, list[dict[str, Any]]] = {}
    for table, topic in topic_of.items():
        for row in scan_rows(catalog, table):
            rows.setdefault((topic, row["kafka_partition"], row["kafka_offset"]), []).append(row)
    rejects: dict[Position, list[dict[str, Any]]] = {}
    for row in scan_rows(catalog, REJECTS, ("source_topic", "source_partition", "source_offset", "reason", "value")):
        rejects.setdefault((row["source_topic"], row["source_partition"], row["source_offset"]), []).append(row)

    verdict = ValueVerdict()
    mismatched: set[Position] = set()
    good_rejected: set[Position] = set()
    bad_landed: set[Position] = set()
    bytes_differ: set[Position] = set()
    reasons: Counter[str] = Counter()
    good_reasons: Counter[str] = Counter()
    for pos, record in source.items():
        decoded = registry.decode(record.value, dep.subject(record.topic))
        want = expectations.get(pos) or ("row" if decoded is not None else "reject")
        for row in rows.get(pos, []):
            verdict.checked_rows += 1
            if decoded is None or want == "reject":
                bad_landed.add(pos)
                _example(verdict, f"{_fmt(pos)} landed as a row but cannot decode: {_short(record.value)}")
                continue
            diff = _diff(decoded.record, row)
            if diff:
                mismatched.add(pos)
                _example(verdict, f"{_fmt(pos)} row differs from source: {'; '.join(diff[:3])}")
        for reject in rejects.get(pos, []):
            verdict.checked_rejects += 1
            reasons[reject["reason"]] += 1
            if reject["value"] != record.value:
                bytes_differ.add(pos)
                _example(
                    verdict,
                    f"{_fmt(pos)} reject value {_short(reject['value'])} != source {_short(record.value)}",
                )
            if want == "row":
                good_rejected.add(pos)
                good_reasons[reject["reason"]] += 1
    verdict.mismatched = position_ranges(mismatched)
    verdict.good_rejected = position_ranges(good_rejected)
    verdict.bad_landed = position_ranges(bad_landed)
    verdict.reject_bytes_differ = position_ranges(bytes_differ)
    verdict.reject_reasons = dict(reasons.most_common())
    verdict.good_rejected_reasons = dict(good_reasons.most_common())
    return verdict


def _fmt(pos: Position) -> str:
    return f"{pos[0]}/{pos[1]}@{pos[2]}"


def _short(value: bytes | None) -> str:
    if value is None:
        return "None"
    return f"{len(value)} bytes {value[:12].hex()}{'...' if len(value) > 12 else ''}"


def _example(verdict: ValueVerdict, text: str, limit: int = 12) -> None:
    if len(verdict.examples) < limit:
        verdict.examples.append(text)
