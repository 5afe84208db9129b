"""IcebergWriter and ensure_tables against a real SQLite SqlCatalog in tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException
from pyiceberg.table import Table

from k2.errors import TableSchemaMismatch
from k2.lake import files
from k2.lake.arrow import companies_to_arrow, events_to_arrow, rejects_to_arrow
from k2.lake.evolution import new_optional_fields
from k2.lake.laps import STEPS, Laps
from k2.lake.offsets import COMMIT_ID_KEY, WORKER_ID_KEY, read_offsets
from k2.lake.records import BufferedEvent
from k2.lake.schemas import COMPANIES, QUOTES, REJECTS, TABLES, TRADES
from k2.lake.tables import ensure_table, ensure_tables
from k2.lake.writer import IcebergWriter, LakeRegressed, TableRecreated

from .lake_helpers import (
    DAY_MS,
    QUOTES_TOPIC,
    REFERENCE_TOPIC,
    T0,
    TOPICS,
    TRADES_TOPIC,
    company,
    reject,
    sqlite_catalog,
    trade,
    trade_events,
)


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    return sqlite_catalog(tmp_path)


@pytest.fixture
def writer(catalog: SqlCatalog) -> IcebergWriter:
    ensure_tables(catalog)
    return IcebergWriter(catalog, TOPICS, "test:1", sleep=lambda _: None)


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def offsets_of(events: list[BufferedEvent]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for e in events:
        out[(e.topic, e.partition)] = max(e.offset, out.get((e.topic, e.partition), -1))
    return out


def rows(table: Table) -> list[dict[str, Any]]:
    return sorted(table.scan().to_arrow().to_pylist(), key=lambda r: (r.get("kafka_partition"), r.get("kafka_offset")))


# -- ensure_tables ------------------------------------------------------------------------


def test_ensure_tables_creates_all_then_changes_nothing(catalog: SqlCatalog, tmp_path: Path) -> None:
    first = ensure_tables(catalog)
    assert set(first) == set(TABLES)
    assert {ns[0] for ns in catalog.list_namespaces()} == {"market_data", "reference_data"}
    files = files_under(tmp_path)
    locations = {name: t.metadata_location for name, t in first.items()}

    second = ensure_tables(catalog)
    assert files_under(tmp_path) == files  # no new metadata file, no snapshot
    assert {name: t.metadata_location for name, t in second.items()} == locations
    assert all(t.current_snapshot() is None for t in second.values())
    for name, table in second.items():
        assert table.schema() == TABLES[name].schema
        assert table.spec() == TABLES[name].partition_spec
        assert table.sort_order().fields == TABLES[name].sort_order.fields
        assert table.properties["write.parquet.compression-codec"] == "zstd"
        assert table.properties["write.format.default"] == "parquet"


def test_ensure_table_reports_created_and_survives_a_lost_race(catalog: SqlCatalog, monkeypatch: Any) -> None:
    table_def = TABLES[TRADES]
    _, created = ensure_table(catalog, table_def)
    assert created
    _, created = ensure_table(catalog, table_def)
    assert not created

    # Another worker creates the table between our "not found" and our create.
    other = TABLES[QUOTES]
    real_load = catalog.load_table
    calls = {"n": 0}

    def load_after_losing_the_race(identifier: Any) -> Table:
        calls["n"] += 1
        if calls["n"] == 1:
            catalog.create_namespace_if_not_exists(other.namespace)
            catalog.create_table(other.name, other.schema, partition_spec=other.partition_spec)
            from pyiceberg.exceptions import NoSuchTableError

            raise NoSuchTableError(other.name)
        return real_load(identifier)

    monkeypatch.setattr(catalog, "load_table", load_after_losing_the_race)
    table, created = ensure_table(catalog, other)
    assert not created
    assert table.name() == ("market_data", "quotes")


def test_ensure_tables_refuses_a_drifted_table(catalog: SqlCatalog) -> None:
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    catalog.create_namespace("market_data")
    catalog.create_table(TRADES, Schema(NestedField(1, "symbol", StringType(), required=True)))
    with pytest.raises(TableSchemaMismatch, match="missing column price"):
        ensure_tables(catalog)


def test_ensure_tables_switches_off_pyiceberg_commit_retries_once(catalog: SqlCatalog) -> None:
    catalog.create_namespace("market_data")
    spec = TABLES[TRADES]
    catalog.create_table(TRADES, spec.schema, partition_spec=spec.partition_spec)  # no K2 properties
    table = ensure_tables(catalog)[TRADES]
    assert table.properties["commit.retry.num-retries"] == "0"
    location = table.metadata_location
    assert ensure_tables(catalog)[TRADES].metadata_location == location


def test_the_writer_heals_a_table_that_would_retry_on_its_own(catalog: SqlCatalog) -> None:
    catalog.create_namespace("market_data")
    spec = TABLES[TRADES]
    catalog.create_table(TRADES, spec.schema, partition_spec=spec.partition_spec)
    writer = IcebergWriter(catalog, TOPICS, "w")
    events = trade_events(0, range(2))
    writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), "c1")
    assert catalog.load_table(TRADES).properties["commit.retry.num-retries"] == "0"


# -- commits ------------------------------------------------------------------------------


def test_commit_writes_rows_and_offsets_in_one_snapshot(writer: IcebergWriter) -> None:
    events = trade_events(0, range(10)) + trade_events(1, range(5))
    result = writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), "commit-1")

    table = writer.table(TRADES, refresh=True)
    assert result.rows_written == 15
    assert result.rows_dropped == 0
    assert result.attempts == 1
    assert result.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    assert len(table.snapshots()) == 1
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None
    assert summary["k2.offsets.market.trades.raw.0"] == "9"
    assert summary["k2.offsets.market.trades.raw.1"] == "4"
    assert summary[COMMIT_ID_KEY] == "commit-1"
    assert summary[WORKER_ID_KEY] == "test:1"
    assert read_offsets(table) == {(TRADES_TOPIC, 0): 9, (TRADES_TOPIC, 1): 4}
    got = rows(table)
    assert len(got) == 15
    assert got[0]["price"] == Decimal("36.667000")
    assert got[3]["exchange_timestamp"].timestamp() * 1000 == T0 + 3


def test_a_commit_says_what_each_step_took_and_how_many_snapshots_the_table_lists(writer: IcebergWriter) -> None:
    for n in range(2):
        events = trade_events(0, range(n * 5, n * 5 + 5))
        result = writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), f"c{n}")
    assert list(result.steps) == list(STEPS)
    assert all(seconds >= 0 for seconds in result.steps.values())
    assert sum(result.steps.values()) <= result.duration_s
    assert result.snapshots == 2
    # The upsert table too (its data files and manifests are one step: pyiceberg's upsert stages both).
    versions = [BufferedEvent(REFERENCE_TOPIC, 0, 0, company())]
    upserted = writer.commit(COMPANIES, companies_to_arrow(versions, updated_at=T0), offsets_of(versions), "u1")
    assert list(upserted.steps) == ["refresh", "plan", "write", "catalog"] and upserted.snapshots == 1


def test_laps_give_each_step_the_time_since_the_previous_one() -> None:
    ticks = iter([10.0, 10.5, 11.0, 13.0, 13.25])
    laps = Laps(clock=lambda: next(ticks))
    laps.lap("refresh")
    laps.lap("plan")
    laps.lap("refresh")  # a second attempt adds to the same step
    laps.lap("catalog")
    assert laps.seconds == {"refresh": 2.5, "plan": 0.5, "catalog": 0.25}


def test_the_same_batch_twice_lands_once(writer: IcebergWriter) -> None:
    events = trade_events(0, range(10))
    batch = events_to_arrow(TRADES, events)
    writer.commit(TRADES, batch, offsets_of(events), "c1")
    again = writer.commit(TRADES, batch, offsets_of(events), "c2")
    assert again.snapshot_id is None
    assert (again.rows_written, again.rows_dropped) == (0, 10)
    table = writer.table(TRADES, refresh=True)
    assert len(table.snapshots()) == 1
    assert table.scan().to_arrow().num_rows == 10


def test_an_overlapping_replay_writes_only_the_new_tail(writer: IcebergWriter) -> None:
    first = trade_events(0, range(10))
    writer.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "c1")
    replay = trade_events(0, range(5, 15))
    result = writer.commit(TRADES, events_to_arrow(TRADES, replay), offsets_of(replay), "c2")
    assert (result.rows_written, result.rows_dropped) == (5, 5)
    assert [r["kafka_offset"] for r in rows(writer.table(TRADES))] == list(range(15))


def test_a_table_recreated_under_the_writer_is_reported_as_such(writer: IcebergWriter, catalog: SqlCatalog) -> None:
    """pyiceberg's refresh raises a bare ValueError (``Table UUID does not match``) once the table was
    dropped and created again; the writer turns it into TableRecreated, which the pipeline acts on."""
    first = trade_events(0, range(10))
    writer.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "c1")
    catalog.drop_table(TABLES[TRADES].name)
    ensure_table(catalog, TABLES[TRADES])
    more = trade_events(0, range(10, 20))
    with pytest.raises(TableRecreated, match="dropped and created again"):
        writer.commit(TRADES, events_to_arrow(TRADES, more), offsets_of(more), "c2")
    writer.forget_tables()
    result = writer.commit(TRADES, events_to_arrow(TRADES, more), offsets_of(more), "c3")
    assert result.rows_written == 10
    assert read_offsets(writer.table(TRADES, refresh=True)) == {(TRADES_TOPIC, 0): 19}


def test_a_table_rolled_back_under_the_writer_stops_the_commit_and_says_where_to_land_again(
    writer: IcebergWriter, catalog: SqlCatalog
) -> None:
    """Issue 10: a commit on top of a rolled-back table would record marks over a hole; it must not happen."""
    first, second = trade_events(0, range(10)), trade_events(0, range(10, 20))
    writer.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "c1")
    writer.commit(TRADES, events_to_arrow(TRADES, second), offsets_of(second), "c2")
    table = catalog.load_table(TABLES[TRADES].name)
    oldest = min(table.snapshots(), key=lambda s: s.timestamp_ms)
    table.manage_snapshots().rollback_to_snapshot(oldest.snapshot_id).commit()
    third = trade_events(0, range(20, 30))
    with pytest.raises(LakeRegressed) as caught:
        writer.commit(TRADES, events_to_arrow(TRADES, third), offsets_of(third), "c3")
    assert caught.value.behind == {TRADES: {(TRADES_TOPIC, 0): (19, 9)}}
    assert caught.value.starts == {(TRADES_TOPIC, 0): 10}
    assert [r["kafka_offset"] for r in rows(writer.table(TRADES, refresh=True))] == list(range(10))  # nothing landed
    # Said once: the marks read are the new baseline, and landing again from 10 lands exactly the lost rows.
    again = second + third
    result = writer.commit(TRADES, events_to_arrow(TRADES, again), offsets_of(again), "c4")
    assert result.rows_written == 20
    assert [r["kafka_offset"] for r in rows(writer.table(TRADES, refresh=True))] == list(range(30))


def test_lake_marks_read_every_table_and_name_each_that_went_back(writer: IcebergWriter, catalog: SqlCatalog) -> None:
    trades = trade_events(0, range(10))
    writer.commit(TRADES, events_to_arrow(TRADES, trades), offsets_of(trades), "c1")
    writer.commit(TRADES, events_to_arrow(TRADES, trade_events(0, range(10, 12))), {(TRADES_TOPIC, 0): 11}, "c2")
    assert writer.lake_marks() == {(TRADES_TOPIC, 0): 11}
    table = catalog.load_table(TABLES[TRADES].name)
    table.manage_snapshots().rollback_to_snapshot(
        min(table.snapshots(), key=lambda s: s.timestamp_ms).snapshot_id
    ).commit()
    with pytest.raises(LakeRegressed) as caught:
        writer.lake_marks()
    assert caught.value.marks == {(TRADES_TOPIC, 0): 9} and caught.value.starts == {(TRADES_TOPIC, 0): 10}
    assert writer.lake_marks() == {(TRADES_TOPIC, 0): 9}  # once


def test_offsets_are_cumulative_across_partitions(writer: IcebergWriter) -> None:
    p0, p1 = trade_events(0, range(3)), trade_events(1, range(7))
    writer.commit(TRADES, events_to_arrow(TRADES, p0), offsets_of(p0), "c1")
    result = writer.commit(TRADES, events_to_arrow(TRADES, p1), offsets_of(p1), "c2")
    expected = {(TRADES_TOPIC, 0): 2, (TRADES_TOPIC, 1): 6}
    assert result.offsets == expected
    assert read_offsets(writer.table(TRADES)) == expected
    assert writer.committed_offsets(TRADES) == expected


def test_source_offsets_beyond_the_rows_are_recorded(writer: IcebergWriter) -> None:
    # Offsets 3..5 were rejected: the trades table still records that it got past them.
    events = trade_events(0, range(3))
    result = writer.commit(TRADES, events_to_arrow(TRADES, events), {(TRADES_TOPIC, 0): 5}, "c1")
    assert result.offsets == {(TRADES_TOPIC, 0): 5}


def test_offsets_of_another_topic_are_refused(writer: IcebergWriter) -> None:
    events = trade_events(0, range(3))
    with pytest.raises(ValueError, match="fed by"):
        writer.commit(TRADES, events_to_arrow(TRADES, events), {(QUOTES_TOPIC, 0): 2}, "c1")


def test_commit_from_a_thread(writer: IcebergWriter) -> None:
    events = trade_events(0, range(4))
    batch = events_to_arrow(TRADES, events)
    result = asyncio.run(asyncio.to_thread(writer.commit, TRADES, batch, offsets_of(events), "c1"))
    assert result.rows_written == 4


def test_rejects_track_offsets_per_source_topic(writer: IcebergWriter) -> None:
    rejects = [reject(TRADES_TOPIC, 0, 5), reject(QUOTES_TOPIC, 2, 8), reject(QUOTES_TOPIC, 2, 9)]
    batch = rejects_to_arrow(rejects)
    first = writer.commit(REJECTS, batch, {}, "r1")
    assert first.offsets == {(TRADES_TOPIC, 0): 5, (QUOTES_TOPIC, 2): 9}
    again = writer.commit(REJECTS, batch, {}, "r2")
    assert again.rows_written == 0
    stored = writer.table(REJECTS, refresh=True).scan().to_arrow()
    assert stored.num_rows == 3
    assert b"\xff\xfe" in stored["value"][0].as_py()


# -- concurrency --------------------------------------------------------------------------


@pytest.fixture
def two_writers(tmp_path: Path) -> Iterator[tuple[IcebergWriter, IcebergWriter]]:
    """Two workers, each with its own catalog connection to the same SQLite database."""
    a, b = sqlite_catalog(tmp_path), sqlite_catalog(tmp_path)
    ensure_tables(a)
    yield (
        IcebergWriter(a, TOPICS, "worker-a", sleep=lambda _: None),
        IcebergWriter(b, TOPICS, "worker-b", sleep=lambda _: None),
    )


def interleave(writer: IcebergWriter, monkeypatch: Any, action: Any) -> None:
    """Run ``action`` (another worker's commit) right after ``writer`` refreshes on its first attempt."""
    real = writer.table
    done = {"fired": False}

    def table(name: str, *, refresh: bool = False) -> Table:
        loaded = real(name, refresh=refresh)
        if refresh and not done["fired"]:
            done["fired"] = True
            action()
        return loaded

    monkeypatch.setattr(writer, "table", table)


def test_a_conflicting_commit_is_retried_with_fresh_offsets(
    two_writers: tuple[IcebergWriter, IcebergWriter], monkeypatch: Any
) -> None:
    a, b = two_writers
    mine, theirs = trade_events(0, range(10)), trade_events(1, range(4))
    interleave(a, monkeypatch, lambda: b.commit(TRADES, events_to_arrow(TRADES, theirs), offsets_of(theirs), "b1"))

    result = a.commit(TRADES, events_to_arrow(TRADES, mine), offsets_of(mine), "a1")

    assert result.attempts == 2
    assert result.rows_written == 10
    table = a.table(TRADES, refresh=True)
    assert read_offsets(table) == {(TRADES_TOPIC, 0): 9, (TRADES_TOPIC, 1): 3}
    assert table.scan().to_arrow().num_rows == 14
    assert len(table.snapshots()) == 2


def test_a_retry_after_a_conflict_commits_the_data_files_its_first_attempt_wrote(
    tmp_path: Path, two_writers: tuple[IcebergWriter, IcebergWriter], monkeypatch: Any
) -> None:
    """Another worker's commit to other partitions costs a retry its manifests and catalog swap only:
    the rows are the same, so the Parquet files written for them are committed, not written again."""
    a, b = two_writers
    mine, theirs = trade_events(0, range(10)), trade_events(1, range(4))
    interleave(a, monkeypatch, lambda: b.commit(TRADES, events_to_arrow(TRADES, theirs), offsets_of(theirs), "b1"))

    result = a.commit(TRADES, events_to_arrow(TRADES, mine), offsets_of(mine), "a1")

    assert result.attempts == 2 and result.rows_written == 10
    table = a.table(TRADES, refresh=True)
    committed = {task.file.file_path.rsplit("/", 1)[-1] for task in table.scan().plan_files()}
    on_disk = {p.name for p in (tmp_path / "warehouse").rglob("*.parquet")}
    assert len(committed) == 2 and on_disk == committed  # b's file and a's one: no orphan of a's first attempt


def test_a_conflict_on_the_same_offsets_writes_nothing_twice(
    two_writers: tuple[IcebergWriter, IcebergWriter], monkeypatch: Any
) -> None:
    # A rebalance: b landed the partition while a was about to; a must not duplicate it.
    a, b = two_writers
    events = trade_events(0, range(10))
    batch = events_to_arrow(TRADES, events)
    interleave(a, monkeypatch, lambda: b.commit(TRADES, batch, offsets_of(events), "b1"))

    result = a.commit(TRADES, batch, offsets_of(events), "a1")

    assert (result.rows_written, result.rows_dropped, result.snapshot_id) == (0, 10, None)
    assert a.table(TRADES, refresh=True).scan().to_arrow().num_rows == 10


def count_refreshes(monkeypatch: Any) -> dict[str, int]:
    """How often any table is reloaded from its catalog (``Table.refresh``) from now on."""
    real, seen = Table.refresh, {"n": 0}

    def refresh(self: Table) -> Table:
        seen["n"] += 1
        return real(self)

    monkeypatch.setattr(Table, "refresh", refresh)
    return seen


def test_the_only_writer_commits_on_the_metadata_its_own_last_commit_returned(
    writer: IcebergWriter, monkeypatch: Any
) -> None:
    """Issue 19: a refresh is a catalog round trip and a metadata read (61 ms of a 0.43 s REST commit).
    When the table is as this writer's last commit left it, the catalog's own check (main still at the
    snapshot the commit builds on) stands in for it, so the writer does not reload the table first."""
    first, second = trade_events(0, range(10)), trade_events(0, range(10, 20))
    writer.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "c1")
    refreshes = count_refreshes(monkeypatch)

    result = writer.commit(TRADES, events_to_arrow(TRADES, second), offsets_of(second), "c2")

    assert (result.attempts, result.rows_written, refreshes["n"]) == (1, 10, 0)
    assert read_offsets(writer.table(TRADES, refresh=True)) == {(TRADES_TOPIC, 0): 19}


def test_another_writers_commit_in_between_costs_one_retry_at_once_and_lands_nothing_twice(
    two_writers: tuple[IcebergWriter, IcebergWriter], monkeypatch: Any
) -> None:
    """The writer's metadata is stale once another worker committed (a rebalance moved a partition):
    its first attempt is refused by the catalog, and the second reads the table afresh and drops what
    the other landed. The refusal is expected, so the retry does not back off."""
    a, b = two_writers
    slept: list[float] = []
    a._sleep = slept.append
    first = trade_events(0, range(10))
    a.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "a1")
    theirs = trade_events(0, range(10, 20)) + trade_events(1, range(4))
    b.commit(TRADES, events_to_arrow(TRADES, theirs), offsets_of(theirs), "b1")

    mine = trade_events(0, range(15, 30))
    result = a.commit(TRADES, events_to_arrow(TRADES, mine), offsets_of(mine), "a2")

    assert (result.attempts, result.rows_written, result.rows_dropped, slept) == (2, 10, 5, [])
    table = a.table(TRADES, refresh=True)
    landed = [(r["kafka_partition"], r["kafka_offset"]) for r in rows(table)]
    assert landed == [(0, o) for o in range(30)] + [(1, o) for o in range(4)]
    assert read_offsets(table) == {(TRADES_TOPIC, 0): 29, (TRADES_TOPIC, 1): 3}


def test_once_another_writer_was_seen_the_writer_reads_the_table_before_each_commit_for_a_while(
    two_writers: tuple[IcebergWriter, IcebergWriter], monkeypatch: Any
) -> None:
    """Workers sharing a table (scale-out) would each lose every first attempt to the others' commits:
    after seeing another writer's snapshot, a writer refreshes before committing for ``shared_hold_s``."""
    a, b = two_writers
    first, theirs = trade_events(0, range(10)), trade_events(1, range(4))
    a.commit(TRADES, events_to_arrow(TRADES, first), offsets_of(first), "a1")
    b.commit(TRADES, events_to_arrow(TRADES, theirs), offsets_of(theirs), "b1")
    more = trade_events(0, range(10, 20))
    assert a.commit(TRADES, events_to_arrow(TRADES, more), offsets_of(more), "a2").attempts == 2
    refreshes = count_refreshes(monkeypatch)

    again = trade_events(0, range(20, 30))
    result = a.commit(TRADES, events_to_arrow(TRADES, again), offsets_of(again), "a3")

    assert (result.attempts, refreshes["n"]) == (1, 1)
    a.shared_hold_s = 0.0  # the hold is over: alone again, it trusts its own commit
    last = trade_events(0, range(30, 40))
    assert a.commit(TRADES, events_to_arrow(TRADES, last), offsets_of(last), "a4").attempts == 1
    assert refreshes["n"] == 1


def test_conflicts_beyond_max_attempts_are_raised(tmp_path: Path, monkeypatch: Any) -> None:
    a, b = sqlite_catalog(tmp_path), sqlite_catalog(tmp_path)
    ensure_tables(a)
    w = IcebergWriter(a, TOPICS, "a", max_attempts=2, sleep=lambda _: None)
    other = IcebergWriter(b, TOPICS, "b", sleep=lambda _: None)
    real = w.table
    n = iter(range(100))

    def always_beaten(name: str, *, refresh: bool = False) -> Table:
        loaded = real(name, refresh=refresh)
        if refresh:
            events = trade_events(5, range(next(n), 100, 100))
            other.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), f"b{len(events)}")
        return loaded

    monkeypatch.setattr(w, "table", always_beaten)
    events = trade_events(0, range(3))
    with pytest.raises(CommitFailedException):
        w.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), "a1")


def test_a_lost_answer_that_had_landed_is_recognised(writer: IcebergWriter, monkeypatch: Any) -> None:
    real_append = files.append
    calls = {"n": 0}

    def append_then_lose_the_answer(
        table: Table, df: pa.Table, properties: dict[str, str], laps: Any = None, written: Any = None
    ) -> None:
        real_append(table, df, properties, laps, written)
        calls["n"] += 1
        if calls["n"] == 1:
            raise CommitStateUnknownException("gateway timeout")

    monkeypatch.setattr(files, "append", append_then_lose_the_answer)
    events = trade_events(0, range(6))
    result = writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), "c1")
    assert result.attempts == 2
    assert result.rows_written == 6
    assert result.snapshot_id is not None
    assert writer.table(TRADES, refresh=True).scan().to_arrow().num_rows == 6


# -- reference data upsert ----------------------------------------------------------------


def ref(offset: int, **overrides: Any) -> BufferedEvent:
    return BufferedEvent(REFERENCE_TOPIC, 0, offset, company(**overrides))


def test_companies_upsert_keeps_the_latest_and_carries_offsets(writer: IcebergWriter) -> None:
    first = [
        ref(0),
        ref(1, company_id=2, symbol="CBA", company_name="Commonwealth Bank"),
        ref(2, company_name="BHP v2"),
    ]
    result = writer.commit(COMPANIES, companies_to_arrow(first, updated_at=T0), offsets_of(first), "c1")
    assert (result.rows_written, result.rows_superseded) == (2, 1)
    table = writer.table(COMPANIES, refresh=True)
    assert {r["company_id"]: r["company_name"] for r in rows(table)} == {1: "BHP v2", 2: "Commonwealth Bank"}
    assert read_offsets(table) == {(REFERENCE_TOPIC, 0): 2}

    second = [ref(3, company_id=2, symbol="CBA", company_name="CBA delisted", end_date="2030-01-01")]
    result = writer.commit(COMPANIES, companies_to_arrow(second, updated_at=T0 + 1), offsets_of(second), "c2")
    table = writer.table(COMPANIES, refresh=True)
    current = {r["company_id"]: r for r in rows(table)}
    assert len(current) == 2
    assert current[2]["company_name"] == "CBA delisted"
    assert current[2]["end_date"] == date(2030, 1, 1)
    assert current[2]["kafka_offset"] == 3
    assert current[1]["company_name"] == "BHP v2"
    assert read_offsets(table) == {(REFERENCE_TOPIC, 0): 3}
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None and summary[COMMIT_ID_KEY] == "c2"

    # A replay of the first batch changes nothing.
    replay = writer.commit(COMPANIES, companies_to_arrow(first, updated_at=T0 + 2), offsets_of(first), "c3")
    assert (replay.rows_written, replay.rows_dropped) == (0, 3)
    assert writer.table(COMPANIES, refresh=True).scan().to_arrow().num_rows == 2


# -- schema evolution ---------------------------------------------------------------------


def test_evolution_adds_an_optional_column_once_and_old_rows_read_null(writer: IcebergWriter) -> None:
    old = trade_events(0, range(3))
    writer.commit(TRADES, events_to_arrow(TRADES, old), offsets_of(old), "c1")

    avro = {"type": "record", "name": "Trade", "fields": [{"name": "trade_id", "type": ["null", "string"]}]}
    new_fields = new_optional_fields(avro, writer.table(TRADES).schema())
    assert writer.ensure_columns(TRADES, new_fields) is True
    schema_ids = len(writer.table(TRADES, refresh=True).schemas())
    assert writer.ensure_columns(TRADES, new_fields) is False
    assert len(writer.table(TRADES, refresh=True).schemas()) == schema_ids
    assert not writer.table(TRADES).schema().find_field("trade_id").required

    new = [BufferedEvent(TRADES_TOPIC, 0, o, trade(trade_id=f"T-{o}", exchange_timestamp=T0 + o)) for o in (3, 4)]
    batch = events_to_arrow(TRADES, new, writer.arrow_schema(TRADES))
    writer.commit(TRADES, batch, offsets_of(new), "c2")
    # A batch built with the pre-evolution schema still lands (the new column is optional).
    legacy = trade_events(0, range(5, 6))
    writer.commit(TRADES, events_to_arrow(TRADES, legacy), offsets_of(legacy), "c3")

    got = {r["kafka_offset"]: r["trade_id"] for r in rows(writer.table(TRADES, refresh=True))}
    assert got == {0: None, 1: None, 2: None, 3: "T-3", 4: "T-4", 5: None}


# -- partitioning -------------------------------------------------------------------------


def test_rows_are_partitioned_by_exchange_day(writer: IcebergWriter) -> None:
    day0 = trade_events(0, range(3), ts=T0)
    day1 = [BufferedEvent(TRADES_TOPIC, 0, o, trade(exchange_timestamp=T0 + DAY_MS - o)) for o in range(3, 5)]
    events = day0 + day1
    writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), "c1")

    table = writer.table(TRADES, refresh=True)
    files = list(table.scan().plan_files())
    days = sorted((task.file.partition[0], task.file.record_count) for task in files)
    first_day = T0 // DAY_MS
    assert days == [(first_day, 3), (first_day + 1, 2)]
    for task in files:  # each file keeps the declared order
        stamps = pq.read_table(urlparse(task.file.file_path).path)["exchange_timestamp"].to_pylist()
        assert stamps == sorted(stamps)
    assert table.spec().fields[0].name == "exchange_timestamp_day"
    # Day pruning: a filter on one day plans one file.
    one_day = list(table.scan(row_filter=f"exchange_timestamp >= '{_iso(T0 + DAY_MS - DAY_MS // 2)}'").plan_files())
    assert len(one_day) == 1


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_quotes_land_too(writer: IcebergWriter) -> None:
    from .lake_helpers import quote

    events = [BufferedEvent(QUOTES_TOPIC, 2, o, quote(exchange_timestamp=T0 + o)) for o in range(4)]
    result = writer.commit(QUOTES, events_to_arrow(QUOTES, events), offsets_of(events), "q1")
    assert result.offsets == {(QUOTES_TOPIC, 2): 3}
    assert writer.table(QUOTES).scan().to_arrow().num_rows == 4


def test_an_existing_table_gains_the_optional_columns_a_newer_k2_defines(catalog: SqlCatalog) -> None:
    """A rejects table made before rejects kept their headers: ensure_tables adds the column, once."""
    from pyiceberg.schema import Schema

    from k2.lake.schemas import REJECTS_SCHEMA

    table_def = TABLES[REJECTS]
    catalog.create_namespace("market_data")
    old = Schema(*(f for f in REJECTS_SCHEMA.fields if f.name != "headers"))
    catalog.create_table(
        table_def.name, schema=old, partition_spec=table_def.partition_spec, properties=dict(table_def.properties)
    )
    table, created = ensure_table(catalog, table_def)
    assert not created and table.schema().find_field("headers").required is False
    schemas = len(table.metadata.schemas)
    ensure_table(catalog, table_def)
    assert len(catalog.load_table(table_def.name).metadata.schemas) == schemas
    writer = IcebergWriter(catalog, TOPICS, "w:1", sleep=lambda _: None)
    rows = rejects_to_arrow([reject(TRADES_TOPIC, 0, 1, headers=(("trace", b"t"),))], writer.arrow_schema(REJECTS))
    writer.commit(REJECTS, rows, {}, "c1")
    landed = writer.table(REJECTS, refresh=True).scan().to_arrow().to_pylist()
    assert landed[0]["headers"] == [{"key": "trace", "value": b"t"}]


def test_ensure_tables_merges_manifests_unless_the_table_says_otherwise(catalog: SqlCatalog) -> None:
    """A sink commits every second: without merging, every commit adds a manifest the next ones all list."""
    catalog.create_namespace("market_data")
    for name in (TRADES, QUOTES):
        spec = TABLES[name]
        catalog.create_table(TABLES[name].name, spec.schema, partition_spec=spec.partition_spec)  # made earlier
    with catalog.load_table(TABLES[QUOTES].name).transaction() as txn:
        txn.set_properties({"commit.manifest-merge.enabled": "false"})  # the owner's own choice
    tables = ensure_tables(catalog)
    assert tables[TRADES].properties["commit.manifest-merge.enabled"] == "true"
    assert tables[QUOTES].properties["commit.manifest-merge.enabled"] == "false"
    assert ensure_tables(catalog)[TRADES].metadata_location == tables[TRADES].metadata_location  # once


def _largest_rewrite(catalog: SqlCatalog, target: int, commits: int) -> tuple[int, int]:
    """Commit ``commits`` times to trades with K2's merge settings but bins of ``target`` bytes: the most
    manifest bytes one commit read and wrote again (manifests it dropped), and the manifests at the end."""
    table = ensure_tables(catalog)[TRADES]
    with table.transaction() as txn:
        txn.set_properties({"commit.manifest.target-size-bytes": str(target)})
    writer = IcebergWriter(catalog, TOPICS, "w")
    before: dict[str, int] = {}
    largest = 0
    for n in range(commits):
        events = trade_events(0, range(n * 10, n * 10 + 10))
        writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), f"c{n}")
        table = catalog.load_table(TABLES[TRADES].name)
        snapshot = table.current_snapshot()
        assert snapshot is not None
        now = {m.manifest_path: m.manifest_length for m in snapshot.manifests(table.io)}
        largest = max(largest, sum(length for path, length in before.items() if path not in now))
        before = now
    assert len(table.scan().to_arrow()) == commits * 10
    return largest, len(before)


def test_a_merge_rewrites_at_most_the_target_however_long_the_table_has_grown(tmp_path: Path) -> None:
    """A merge happens inside the commit that triggers it: with K2's bins it rewrites at most the target,
    a manifest once full is never read again (here 24 KiB, so that 45 commits fill several; K2's is
    64 KiB), and the list stays short. With pyiceberg's 8 MiB bins the same history (60 commits)
    rewrites the one merged manifest, growing with every data file of the day, at every merge."""
    assert TABLES[TRADES].properties["commit.manifest.min-count-to-merge"] == "4"
    (tmp_path / "k2").mkdir()
    (tmp_path / "default").mkdir()
    bounded, manifests = _largest_rewrite(sqlite_catalog(tmp_path / "k2"), 24 * 1024, 45)
    unbounded, _ = _largest_rewrite(sqlite_catalog(tmp_path / "default"), 8 * 2**20, 60)
    assert 0 < bounded <= 24 * 1024 and manifests <= 20
    assert unbounded > 36 * 1024


def test_commits_to_a_table_that_merges_manifests_keep_the_manifest_list_short(catalog: SqlCatalog) -> None:
    (table,) = (t for name, t in ensure_tables(catalog).items() if name == TRADES)
    with table.transaction() as txn:
        txn.set_properties({"commit.manifest.min-count-to-merge": "3"})
    writer = IcebergWriter(catalog, TOPICS, "w")
    for n in range(8):
        events = trade_events(0, range(n * 10, n * 10 + 10))
        writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), f"c{n}")
    table = catalog.load_table(TABLES[TRADES].name)
    snapshot = table.current_snapshot()
    assert snapshot is not None and len(table.snapshots()) == 8
    assert len(snapshot.manifests(table.io)) < 3
    assert len(table.scan().to_arrow()) == 80
