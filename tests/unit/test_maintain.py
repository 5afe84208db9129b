"""Table maintenance on a real SQLite catalog: compaction keeps every row and the marks, expiry and orphans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.lake import maintain as maintain_module
from k2.lake.arrow import events_to_arrow
from k2.lake.maintain import MAINTENANCE_KEY, MaintainPolicy, maintain_table
from k2.lake.offsets import COMMIT_ID_KEY, latest_k2_snapshot, read_offsets
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import DAY_MS, T0, TOPICS, TRADES_TOPIC, sqlite_catalog, trade_events

# The data's days are in 2025: every one of them is a past day now, and every snapshot is older than
# a retention of 0 s. (One test moves "now" to the data's first day instead.)
POLICY = MaintainPolicy(snapshot_retention_s=0, keep_snapshots=1, orphan_min_age_s=0, min_files=2)


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    return catalog


def land(writer: IcebergWriter, partition: int, offsets: range, day: int) -> None:
    events = trade_events(partition, offsets, ts=T0 + day * DAY_MS)
    writer.commit(TRADES, events_to_arrow(TRADES, events), {(TRADES_TOPIC, partition): offsets[-1]}, f"c{offsets[0]}")


def offsets(catalog: SqlCatalog) -> list[int]:
    table = catalog.load_table(TABLES[TRADES].name)
    return sorted(table.scan(selected_fields=("kafka_offset",)).to_arrow()["kafka_offset"].to_pylist())


def data_files(catalog: SqlCatalog) -> int:
    return sum(1 for _ in catalog.load_table(TABLES[TRADES].name).scan().plan_files())


def test_compaction_keeps_every_row_and_carries_the_marks_forward(catalog: SqlCatalog, tmp_path: Path) -> None:
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(6):  # six small commits over two days
        land(writer, 0, range(i * 10, i * 10 + 10), day=i % 2)
    before_rows, before_marks = offsets(catalog), read_offsets(catalog.load_table(TABLES[TRADES].name))
    assert data_files(catalog) == 6
    result = maintain_table(catalog, TABLES[TRADES], POLICY, sleep=lambda _: None)
    assert [(before, after) for _, before, after in result.compacted] == [(3, 1), (3, 1)]
    assert data_files(catalog) == 2
    table = catalog.load_table(TABLES[TRADES].name)
    assert offsets(catalog) == before_rows
    assert read_offsets(table) == before_marks
    newest = latest_k2_snapshot(table)
    assert newest is not None and newest.summary is not None
    assert newest.summary[COMMIT_ID_KEY].startswith("maintain-")
    assert newest.summary[MAINTENANCE_KEY].startswith("compact ")
    # Expired: all but the current snapshot; their files are orphans now, and gone.
    assert result.expired > 0 and len(table.snapshots()) == 1
    assert result.orphans > 0
    remaining = {p for p in Path(tmp_path).rglob("*.parquet")}
    assert len(remaining) == 2
    # A replay of what landed lands nothing: the marks held through maintenance.
    again = trade_events(0, range(0, 10), ts=T0)
    assert writer.commit(TRADES, events_to_arrow(TRADES, again), {(TRADES_TOPIC, 0): 9}, "replay").rows_written == 0
    # And a second run has nothing to do.
    second = maintain_table(catalog, TABLES[TRADES], POLICY, sleep=lambda _: None)
    assert (second.compacted, second.expired, second.orphans) == ([], 0, 0)


def test_a_commit_during_compaction_is_kept(catalog: SqlCatalog, monkeypatch: Any) -> None:
    """A worker committing into the same day while the compaction rewrites it: nothing of it is dropped."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(3):
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    real_sort = maintain_module.sort_for_table
    calls = []

    def sort_then_commit(rows: pa.Table, table_def: Any) -> pa.Table:
        calls.append(rows.num_rows)
        if len(calls) == 1:  # between the compaction's read and its commit
            land(writer, 1, range(0, 5), day=0)
        return real_sort(rows, table_def)

    monkeypatch.setattr(maintain_module, "sort_for_table", sort_then_commit)
    result = maintain_table(catalog, TABLES[TRADES], POLICY, sleep=lambda _: None)
    assert calls == [30, 35]  # planned again with the worker's rows
    assert [(b, a) for _, b, a in result.compacted] == [(4, 1)]
    assert len(offsets(catalog)) == 35
    assert read_offsets(catalog.load_table(TABLES[TRADES].name)) == {(TRADES_TOPIC, 0): 29, (TRADES_TOPIC, 1): 4}


def test_today_and_few_files_are_left_alone_and_a_dry_run_changes_nothing(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(3):
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    land(writer, 0, range(30, 40), day=1)
    dry = maintain_table(catalog, TABLES[TRADES], POLICY, sleep=lambda _: None, dry_run=True)
    assert [(b, a) for _, b, a in dry.compacted] == [(3, -1)] and dry.expired == 3
    assert data_files(catalog) == 4 and len(catalog.load_table(TABLES[TRADES].name).snapshots()) == 4
    today = T0 / 1000  # the data's first day is today: not compacted
    assert maintain_table(catalog, TABLES[TRADES], POLICY, now=lambda: today, sleep=lambda _: None).compacted == []
    assert data_files(catalog) == 4
