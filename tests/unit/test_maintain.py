"""Table maintenance on a real SQLite catalog: compaction keeps every row and the marks, expiry and orphans."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitStateUnknownException
from pyiceberg.table import Table, Transaction

from k2.lake import maintain as maintain_module
from k2.lake.arrow import events_to_arrow
from k2.lake.maintain import MAINTENANCE_KEY, MaintainPolicy, expire_table, maintain_table
from k2.lake.offsets import COMMIT_ID_KEY, latest_k2_snapshot, offsets_from_summary, read_offsets
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import DAY_MS, T0, TOPICS, TRADES_TOPIC, sqlite_catalog, trade_events
from .lake_history import history, history_problems, incremental_read, rows_at

# The data's days are in 2025: every one of them is a past day now, and every snapshot is older than
# a retention of 0 s. (One test moves "now" to the data's first day instead.)
POLICY = MaintainPolicy(snapshot_retention_s=0, keep_snapshots=1, orphan_min_age_s=0, min_files=2)
#: Compacts like POLICY but keeps every snapshot and file, so the history can be read.
KEEP_HISTORY = MaintainPolicy(snapshot_retention_s=1e12, keep_snapshots=1000, orphan_min_age_s=1e12, min_files=2)


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
    # And it says what a reader following the table loses: its place, if it was in what expired.
    assert result.expired_until is not None and result.expired_until.startswith("20")
    assert any(f"expired {result.expired} snapshot(s)" in n and "must start again" in n for n in result.notes)
    assert result.orphans > 0
    remaining = {p for p in Path(tmp_path).rglob("*.parquet")}
    assert len(remaining) == 2
    # A replay of what landed lands nothing: the marks held through maintenance.
    again = trade_events(0, range(0, 10), ts=T0)
    assert writer.commit(TRADES, events_to_arrow(TRADES, again), {(TRADES_TOPIC, 0): 9}, "replay").rows_written == 0
    # And a second run has nothing to do.
    second = maintain_table(catalog, TABLES[TRADES], POLICY, sleep=lambda _: None)
    assert (second.compacted, second.expired, second.orphans) == ([], 0, 0)


def test_a_commit_during_compaction_is_kept_and_the_rewrite_is_committed_again_not_redone(
    catalog: SqlCatalog, monkeypatch: Any
) -> None:
    """A worker committing into the same day while the compaction rewrites it: nothing of it is dropped.

    A worker commits every few seconds, and a day's rewrite takes longer: planned again from scratch
    after every conflict, it read and wrote the whole day again each time and never landed (the soak
    at a 5 s flush: "still conflicting after 8 attempts"). The files it rewrote are still live, so the
    same rewrite is committed again on the new snapshot, with the marks the table has now."""
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
    result = maintain_table(catalog, TABLES[TRADES], KEEP_HISTORY, sleep=lambda _: None)
    assert calls == [30]  # the day read and written once; its commit made again after the worker's
    assert [(b, a) for _, b, a in result.compacted] == [(3, 1)]
    assert data_files(catalog) == 2  # the rewrite, and the worker's file of that day, left for the next run
    assert len(offsets(catalog)) == 35
    table = catalog.load_table(TABLES[TRADES].name)
    assert [s.summary.operation.value for s in history(table)[-2:] if s.summary is not None] == ["append", "replace"]
    assert read_offsets(catalog.load_table(TABLES[TRADES].name)) == {(TRADES_TOPIC, 0): 29, (TRADES_TOPIC, 1): 4}
    assert history_problems(catalog.load_table(TABLES[TRADES].name)) == []


def test_a_day_is_read_and_written_a_group_of_files_at_a_time(catalog: SqlCatalog, monkeypatch: Any) -> None:
    """Issue 18: compaction read a whole day into memory, then sorted a copy: a day of the soak's 18
    million trades took the worker to 4.5 GiB (`k2 maintain` alone: 5.5 GiB) against a 2 GiB limit.
    Now a group of files of at most ``group_rows`` rows is read, sorted and written at a time; the
    day is still swapped in one ``replace`` snapshot."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(7):
        land(writer, i % 2, range(i * 10, i * 10 + 10), day=0)
    before = offsets(catalog)
    sorted_rows: list[int] = []
    real_sort = maintain_module.sort_for_table

    def sort(rows: pa.Table, table_def: Any) -> pa.Table:
        sorted_rows.append(rows.num_rows)
        return real_sort(rows, table_def)

    monkeypatch.setattr(maintain_module, "sort_for_table", sort)
    policy = MaintainPolicy(snapshot_retention_s=1e12, orphan_min_age_s=1e12, min_files=2, group_rows=25)
    result = maintain_table(catalog, TABLES[TRADES], policy, sleep=lambda _: None)

    assert sorted_rows == [20, 20, 20, 10]  # whole files, never over 25 rows at once
    assert [(b, a) for _, b, a in result.compacted] == [(7, 4)]
    table = catalog.load_table(TABLES[TRADES].name)
    assert offsets(catalog) == before
    assert [s.summary.operation.value for s in history(table)[-1:] if s.summary is not None] == ["replace"]
    assert history_problems(table) == []


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


def test_a_compaction_is_one_replace_snapshot_that_adds_and_removes_no_row(catalog: SqlCatalog) -> None:
    """Spark's incremental and streaming readers skip a ``replace``; a delete then an append broke them."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(6):
        land(writer, 0, range(i * 10, i * 10 + 10), day=i % 2)
    table = catalog.load_table(TABLES[TRADES].name)
    before = {s.snapshot_id for s in table.snapshots()}
    marks = read_offsets(table)
    maintain_table(catalog, TABLES[TRADES], KEEP_HISTORY, sleep=lambda _: None)
    table = catalog.load_table(TABLES[TRADES].name)
    new = [s for s in history(table) if s.snapshot_id not in before]
    assert [s.summary.operation.value for s in new if s.summary is not None] == ["replace", "replace"]
    total_files = 6
    for snapshot in new:  # one day each: its 3 files swapped for 1, the same 30 rows
        assert snapshot.summary is not None
        summary = snapshot.summary
        total_files += 1 - 3
        assert (summary["added-data-files"], summary["deleted-data-files"]) == ("1", "3")
        assert summary["added-records"] == summary["deleted-records"] == "30"
        assert (summary["total-records"], summary["total-data-files"]) == ("60", str(total_files))
        assert summary["total-delete-files"] == "0"
        assert summary[MAINTENANCE_KEY].startswith("compact ")
        assert offsets_from_summary(summary.additional_properties) == marks
        assert snapshot.parent_snapshot_id is not None
        assert rows_at(table, snapshot.snapshot_id) == rows_at(table, snapshot.parent_snapshot_id)


def test_every_snapshot_holds_every_row_once_and_a_reader_following_the_table_gets_each_row_once(
    catalog: SqlCatalog,
) -> None:
    """Time travel to any snapshot, and an incremental append read across compactions, as Spark does them."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(6):
        land(writer, 0, range(i * 10, i * 10 + 10), day=i % 2)
    first = history(catalog.load_table(TABLES[TRADES].name))[2].snapshot_id  # a reader that read 3 commits
    maintain_table(catalog, TABLES[TRADES], KEEP_HISTORY, sleep=lambda _: None)
    for i in range(6, 9):  # the worker goes on, and the next maintenance compacts day 0 again
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    maintain_table(catalog, TABLES[TRADES], KEEP_HISTORY, sleep=lambda _: None)
    table = catalog.load_table(TABLES[TRADES].name)
    assert history_problems(table) == []
    current = table.metadata.current_snapshot_id
    assert current is not None
    followed = incremental_read(table, first, current)
    assert followed == rows_at(table, current) and set(followed.values()) == {1} and len(followed) == 90


def test_a_compaction_whose_answer_was_lost_is_not_done_again(catalog: SqlCatalog, monkeypatch: Any) -> None:
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(3):
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    real_commit = Transaction.commit_transaction
    lost: list[str] = []

    def commit_then_lose_the_answer(self: Transaction) -> Table:
        table = real_commit(self)
        if not lost:
            lost.append("once")
            raise CommitStateUnknownException("gateway timeout")
        return table

    monkeypatch.setattr(Transaction, "commit_transaction", commit_then_lose_the_answer)
    result = maintain_table(catalog, TABLES[TRADES], KEEP_HISTORY, sleep=lambda _: None)
    table = catalog.load_table(TABLES[TRADES].name)
    assert [s.summary.operation.value for s in history(table) if s.summary is not None].count("replace") == 1
    assert data_files(catalog) == 1 and len(offsets(catalog)) == 30
    assert result.compacted == [] and result.notes == ["compact 2025-06-15: found compacted when planned again"]


def test_expiry_alone_keeps_the_newest_snapshots_and_touches_no_file(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(6):  # six small files of past days: compaction would rewrite them
        land(writer, 0, range(i * 10, i * 10 + 10), day=i % 2)
    table = catalog.load_table(TABLES[TRADES].name)
    newest = sorted(s.snapshot_id for s in table.snapshots()[-2:])
    marks, files = read_offsets(table), data_files(catalog)

    young = expire_table(catalog, TABLES[TRADES], MaintainPolicy(snapshot_retention_s=3600, keep_snapshots=2))
    assert young.expired == 0 and len(catalog.load_table(TABLES[TRADES].name).snapshots()) == 6

    later = time.time() + 7200
    result = expire_table(catalog, TABLES[TRADES], MaintainPolicy(snapshot_retention_s=3600, keep_snapshots=2),
                          now=lambda: later)  # fmt: skip
    table = catalog.load_table(TABLES[TRADES].name)
    assert result.expired == 4 and result.compacted == [] and result.orphans == 0
    assert sorted(s.snapshot_id for s in table.snapshots()) == newest
    assert read_offsets(table) == marks and data_files(catalog) == files
    assert offsets(catalog) == list(range(60))


def test_a_table_keeps_at_most_max_snapshots_however_young(catalog: SqlCatalog) -> None:
    """At a 1 s flush an hour's retention is 3,600 snapshots that every commit reads and writes: the
    cap bounds them whatever their age (the newest ``keep_snapshots`` stay, whatever the cap)."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(7):
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    table = catalog.load_table(TABLES[TRADES].name)
    newest = sorted(s.snapshot_id for s in sorted(table.snapshots(), key=lambda s: s.timestamp_ms)[-3:])

    capped = expire_table(
        catalog, TABLES[TRADES], MaintainPolicy(snapshot_retention_s=3600, keep_snapshots=2, max_snapshots=3)
    )
    table = catalog.load_table(TABLES[TRADES].name)
    assert capped.expired == 4 and sorted(s.snapshot_id for s in table.snapshots()) == newest
    assert offsets(catalog) == list(range(70))
    floor = expire_table(
        catalog, TABLES[TRADES], MaintainPolicy(snapshot_retention_s=3600, keep_snapshots=3, max_snapshots=1)
    )
    assert floor.expired == 0  # keep_snapshots wins over the cap


def test_snapshots_expired_meanwhile_by_another_are_no_error(catalog: SqlCatalog, monkeypatch: Any) -> None:
    """The leader's timer and `k2 maintain` may expire the same snapshots at once: the second plans again."""
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    for i in range(6):
        land(writer, 0, range(i * 10, i * 10 + 10), day=0)
    stale = catalog.load_table(TABLES[TRADES].name)  # what the second one planned from
    later = time.time() + 7200
    policy = MaintainPolicy(snapshot_retention_s=3600, keep_snapshots=2)
    assert expire_table(catalog, TABLES[TRADES], policy, now=lambda: later).expired == 4
    land(writer, 0, range(60, 70), day=0)
    loads = iter([stale])
    real_load = catalog.load_table
    monkeypatch.setattr(catalog, "load_table", lambda name: next(loads, None) or real_load(name))
    result = expire_table(catalog, TABLES[TRADES], policy, now=lambda: later)
    assert result.expired == 1  # planned again: only the one that aged past the newest two since
    assert len(catalog.load_table(TABLES[TRADES].name).snapshots()) == 2
    assert offsets(catalog) == list(range(70))
