"""K2's tables as the suite reads them: their names (the published contract), their rows, their lineage.

Nothing here imports ``k2``: the table names and lineage columns are the ones the README documents.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pyiceberg.catalog import Catalog

from tests.faults.source import Position

if TYPE_CHECKING:
    from tests.faults.deployment import Deployment

__all__ = [
    "COMPANIES",
    "COMPANY_VERSIONS",
    "GAPS",
    "NAMESPACES",
    "OFFSETS_PREFIX",
    "QUOTES",
    "REJECTS",
    "TRADES",
    "gap_positions",
    "lake_positions",
    "reference_ledger",
    "scan_rows",
]

# K2's tables and their lineage columns: the published contract (README), not K2's code.
TRADES, QUOTES = "market_data.trades", "market_data.quotes"
COMPANIES, COMPANY_VERSIONS = "reference_data.companies", "reference_data.company_versions"
REJECTS, GAPS = "market_data.rejects", "market_data.sequence_gaps"
NAMESPACES = ("market_data", "reference_data")
OFFSETS_PREFIX = "k2.offsets."


def scan_rows(catalog: Catalog, name: str, columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every row of a table as a dict (only ``columns``, when given)."""
    table = catalog.load_table(name)
    scan = table.scan(selected_fields=columns) if columns else table.scan()
    rows: list[dict[str, Any]] = scan.to_arrow().to_pylist()
    return rows


def reference_ledger(dep: Deployment) -> str:
    """The table that holds every reference-data offset: ``company_versions`` once K2 writes it
    (a snapshot with K2 offsets), else the upserted ``companies`` (where superseded versions vanish)."""
    catalog = dep.catalog()
    if COMPANY_VERSIONS in dep.tables():
        table = catalog.load_table(COMPANY_VERSIONS)
        for snapshot in table.snapshots():
            props = snapshot.summary.additional_properties if snapshot.summary is not None else {}
            if any(k.startswith(OFFSETS_PREFIX) for k in props):
                return COMPANY_VERSIONS
    return COMPANIES


def lake_positions(dep: Deployment) -> tuple[Counter[Position], Counter[Position], str]:
    """(source positions in market rows and rejects, positions of gap rows, the reference ledger table)."""
    catalog = dep.catalog()
    ledger = reference_ledger(dep)
    seen: Counter[Position] = Counter()
    for table, topic in (
        (TRADES, dep.topics["trades"]),
        (QUOTES, dep.topics["quotes"]),
        (ledger, dep.topics["reference"]),
    ):
        for row in scan_rows(catalog, table, ("kafka_partition", "kafka_offset")):
            seen[(topic, row["kafka_partition"], row["kafka_offset"])] += 1
    for row in scan_rows(catalog, REJECTS, ("source_topic", "source_partition", "source_offset")):
        seen[(row["source_topic"], row["source_partition"], row["source_offset"])] += 1
    gaps: Counter[Position] = Counter()
    if GAPS in dep.tables():
        for row in scan_rows(catalog, GAPS, ("source_topic", "source_partition", "source_offset")):
            gaps[(row["source_topic"], row["source_partition"], row["source_offset"])] += 1
    return seen, gaps, ledger


def gap_positions(dep: Deployment) -> set[Position]:
    """Source positions of the sequence-gap rows of ``dep``'s topics (none when the table does not exist)."""
    if GAPS not in dep.tables():
        return set()
    topics = set(dep.topics.values())
    rows = scan_rows(dep.catalog(), GAPS, ("source_topic", "source_partition", "source_offset"))
    return {(r["source_topic"], r["source_partition"], r["source_offset"]) for r in rows if r["source_topic"] in topics}
