"""Builders for the audit tests: K2 tables in a throwaway SQLite catalog, rows with chosen lineage, a fake Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from k2.admin.watermarks import FirstRecord, LogEnds
from k2.audit.ranges import Ranges
from k2.lake.offsets import summary_properties
from k2.lake.tables import ensure_tables
from k2.observe.group import Group
from k2.settings import Settings

from .lake_helpers import QUOTES_TOPIC, REFERENCE_TOPIC, TRADES_TOPIC, sqlite_catalog

SETTINGS = Settings(trades_topic=TRADES_TOPIC, quotes_topic=QUOTES_TOPIC, reference_topic=REFERENCE_TOPIC)

_FILLERS: dict[str, Any] = {
    "string": "x",
    "large_string": "x",
    "int32": 1,
    "int64": 1,
    "date32[day]": date(2025, 6, 15),
    "binary": b"",
    "large_binary": b"",
}


def k2_lake(tmp_path: Path) -> SqlCatalog:
    """A SQLite catalog holding every K2 table, empty."""
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    return catalog


def _filler(field: pa.Field, n: int) -> pa.Array:
    """A constant column of ``n`` values fitting ``field`` (the audit never reads it)."""
    t = field.type
    if pa.types.is_timestamp(t):
        value: Any = datetime(2025, 6, 15, tzinfo=UTC)
    elif pa.types.is_decimal(t):
        value = Decimal("1.000000")
    elif pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.nulls(n, t) if field.nullable else pa.array([[]] * n, t)
    else:
        value = _FILLERS[str(t)]
    return pa.repeat(pa.scalar(value, t), n)


def rows(table: Table, **columns: Sequence[Any]) -> pa.Table:
    """Rows shaped like ``table``: the given columns, constants in every other one."""
    schema = table.schema().as_arrow()
    n = len(next(iter(columns.values())))
    arrays = [pa.array(columns[f.name], f.type) if f.name in columns else _filler(f, n) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def land(catalog: Catalog, name: str, marks: Mapping[tuple[str, int], int], **columns: Sequence[Any]) -> None:
    """One K2-style commit to ``name``: these rows, and ``marks`` (cumulative) in the snapshot summary."""
    table = catalog.load_table(name)
    props = summary_properties(marks, commit_id=uuid.uuid4().hex, worker_id="test:1")
    table.append(rows(table, **columns), snapshot_properties=props)


class FakeLog:
    """A Kafka that holds a committed record at every offset of ``[start, end)`` but ``empty`` (markers, compaction)
    and ``aborted`` (records only a read_uncommitted reader sees); ``high`` above the end: a transaction is open."""

    def __init__(
        self,
        ends: Mapping[tuple[str, int], int],
        starts: Mapping[tuple[str, int], int] | None = None,
        empty: Mapping[tuple[str, int], Iterable[int]] | None = None,
        *,
        aborted: Mapping[tuple[str, int], Iterable[int]] | None = None,
        high: Mapping[tuple[str, int], int] | None = None,
        compacted: Iterable[str] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        self.ends = dict(ends)
        self.starts = dict(starts or {})
        self.empty = {tp: set(offsets) for tp, offsets in (empty or {}).items()}
        self.aborted = {tp: set(offsets) for tp, offsets in (aborted or {}).items()}
        self.high = dict(high or {})
        self.compacted_topics = set(compacted)
        self.timestamp_ms = timestamp_ms
        self.reads: list[tuple[str, int, list[tuple[int, int]]]] = []

    def bounds(self, topics: Iterable[str]) -> dict[tuple[str, int], LogEnds]:
        wanted = set(topics)
        return {
            tp: LogEnds(self.starts.get(tp, 0), end, self.high.get(tp, end))
            for tp, end in self.ends.items()
            if tp[0] in wanted
        }

    def _held(self, tp: tuple[str, int], offset: int, committed: bool = True) -> bool:
        if offset in self.empty.get(tp, set()):
            return False
        return not (committed and offset in self.aborted.get(tp, set()))

    def offsets_in(self, topic: str, partition: int, ranges: Ranges, *, committed: bool = True) -> pa.Array:
        tp = (topic, partition)
        self.reads.append((topic, partition, ranges.pairs()))
        low, high = self.starts.get(tp, 0), self.ends[tp] if committed else self.high.get(tp, self.ends[tp])
        held = [o for a, b in ranges for o in range(max(a, low), min(b, high - 1) + 1) if self._held(tp, o, committed)]
        return pa.array(held, pa.int64())

    def first_records(
        self, starts: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int]
    ) -> dict[tuple[str, int], FirstRecord | None]:
        out: dict[tuple[str, int], FirstRecord | None] = {}
        for tp, start in starts.items():
            found = (o for o in range(max(start, self.starts.get(tp, 0)), ends.get(tp, 0)) if self._held(tp, o))
            first = next(found, None)
            out[tp] = None if first is None else FirstRecord(first, self.timestamp_ms)
        return out

    def compacted(self, topics: Iterable[str]) -> set[str]:
        return self.compacted_topics & set(topics)

    def __enter__(self) -> FakeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeGroup:
    """A consumer group as Kafka would describe it (the audit asks only who owns what)."""

    def __init__(self, group: Group | None = None) -> None:
        self.described = group or Group("k2", "empty")

    def group(self, group_id: str) -> Group:
        return replace(self.described, group_id=group_id)
