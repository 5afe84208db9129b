"""What each table holds and how far it got, for people (``k2 tables``) and views."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from k2.lake.offsets import read_offsets
from k2.lake.records import TopicPartition
from k2.lake.schemas import TABLES

__all__ = ["TableStatus", "lake_lag", "lake_marks", "table_status"]


@dataclass
class TableStatus:
    name: str
    exists: bool
    snapshot_id: int | None = None
    committed_at_ms: int | None = None
    rows: int = 0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def age_s(self, now_s: float | None = None) -> float | None:
        if self.committed_at_ms is None:
            return None
        return (time.time() if now_s is None else now_s) - self.committed_at_ms / 1000


def table_status(catalog: Catalog) -> list[TableStatus]:
    """Current snapshot, row count (from the summary, no scan) and recorded offsets per K2 table."""
    out = []
    for name in TABLES:
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            out.append(TableStatus(name, exists=False))
            continue
        snap = table.current_snapshot()
        rows = 0
        if snap is not None and snap.summary is not None:
            rows = int(snap.summary.additional_properties.get("total-records", "0"))
        out.append(
            TableStatus(
                name,
                True,
                None if snap is None else snap.snapshot_id,
                None if snap is None else snap.timestamp_ms,
                rows,
                read_offsets(table),
            )
        )
    return out


def lake_lag(
    end_offsets: Mapping[TopicPartition, int], landed: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Events per (topic, partition) not yet in the lake: end offset minus the next offset after the last landed.

    ``landed`` is the union of what every table records (an event lands in exactly one
    table, so the furthest mark across tables is how far the partition got).
    """
    return {tp: max(0, end - (landed.get(tp, -1) + 1)) for tp, end in end_offsets.items()}


def lake_marks(statuses: Iterable[TableStatus]) -> dict[TopicPartition, int]:
    """The lake's mark per source partition: the furthest offset any table records (an event lands in one table)."""
    out: dict[TopicPartition, int] = {}
    for st in statuses:
        for tp, offset in st.offsets.items():
            out[tp] = max(offset, out.get(tp, -1))
    return out
