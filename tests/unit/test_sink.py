"""The flush, on a real SQLite catalog: exactly once across crashes, overlaps and partial ownership."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

from k2.buffer.chunks import REJECTS, ROWS, ChunkKey, to_ipc
from k2.buffer.store import ChunkStore
from k2.lake.arrow import events_to_arrow, rejects_to_arrow
from k2.lake.offsets import read_offsets
from k2.lake.records import BufferedEvent
from k2.lake.schemas import QUOTES, TRADES
from k2.lake.schemas import REJECTS as REJECTS_TABLE
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter
from k2.metrics import K2Metrics
from k2.sink.batches import PendingChunk, overlaps, source_offsets
from k2.sink.flusher import Flusher, SourceBuffer
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.lake_helpers import QUOTES_TOPIC, TOPICS, TRADES_TOPIC, quote, reject, sqlite_catalog, trade_events


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        catalog = sqlite_catalog(tmp_path)
        ensure_tables(catalog)
        self.writer = IcebergWriter(catalog, TOPICS, "test:1")
        self.trades = RecordingTable()
        self.quotes = RecordingTable()
        self.stores = {
            TRADES_TOPIC: ChunkStore(self.trades, TRADES_TOPIC),
            QUOTES_TOPIC: ChunkStore(self.quotes, QUOTES_TOPIC),
        }
        self.metrics = K2Metrics(CollectorRegistry())
        self.flusher = Flusher(
            [
                SourceBuffer(TRADES_TOPIC, (TRADES,), self.stores[TRADES_TOPIC]),
                SourceBuffer(QUOTES_TOPIC, (QUOTES,), self.stores[QUOTES_TOPIC]),
            ],
            lambda: self.writer,
            self.metrics,
        )

    async def put_trades(self, partition: int, offsets: range) -> ChunkKey:
        key = ChunkKey(ROWS, partition, offsets[0], offsets[-1], len(offsets))
        await self.stores[TRADES_TOPIC].put(key, events_to_arrow(TRADES, trade_events(partition, offsets)))
        return key

    def rows(self, table: str) -> list[tuple[int, int]]:
        data = self.writer.table(table, refresh=True).scan().to_arrow()
        return sorted(zip(data["kafka_partition"].to_pylist(), data["kafka_offset"].to_pylist(), strict=True))

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


#: Every partition owned, and everything buffered durable: the frontier far above every chunk.
ALL = {(topic, p): 10**9 for topic in (TRADES_TOPIC, QUOTES_TOPIC) for p in (0, 1, 2)}


async def test_flush_commits_buffered_rows_once_and_clears_the_buffer(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.put_trades(0, range(0, 10))
    await h.put_trades(0, range(10, 15))
    await h.put_trades(1, range(0, 3))
    report = await h.flusher.flush(ALL)
    assert report.failed == {} and report.rows_written == 18
    assert h.rows(TRADES) == [(0, o) for o in range(15)] + [(1, o) for o in range(3)]
    assert read_offsets(h.writer.table(TRADES)) == {(TRADES_TOPIC, 0): 14, (TRADES_TOPIC, 1): 2}
    assert h.stores[TRADES_TOPIC].chunk_keys() == []
    assert h.trades.restore_from_changelog() == {}
    assert h.metric("k2_rows_written_total", table=TRADES) == 18
    assert h.metric("k2_buffered_rows", table=TRADES) == 0
    assert h.metric("k2_iceberg_last_commit_timestamp_seconds", table=TRADES) > 0


async def test_a_commit_says_how_old_its_oldest_event_was_since_produced_and_since_taken(tmp_path: Path) -> None:
    """Issue 19: the lake's freshness, seen from the worker: per commit, the oldest event it made visible,
    counted from its Kafka timestamp (what a reader of the lake waits) and from when the worker took it
    (the worker's share of that wait). A chunk restored from the changelog has neither and is left out."""
    h = Harness(tmp_path)
    now = {"t": 1_000.0}
    h.flusher.clock = lambda: now["t"]
    for store in h.stores.values():
        store.clock = lambda: now["t"]
    trades = events_to_arrow(TRADES, trade_events(0, range(0, 5)))
    await h.stores[TRADES_TOPIC].put(ChunkKey(ROWS, 0, 0, 4, 5), trades, produced_ms=999_000)
    now["t"] = 1_000.5
    later = events_to_arrow(TRADES, trade_events(1, range(0, 5)))
    await h.stores[TRADES_TOPIC].put(ChunkKey(ROWS, 1, 0, 4, 5), later, produced_ms=1_000_400)
    restored = ChunkKey(ROWS, 2, 0, 4, 5)
    h.trades.data[restored.encode()] = to_ipc(events_to_arrow(TRADES, trade_events(2, range(0, 5))))  # no times
    now["t"] = 1_002.0

    report = await h.flusher.flush(ALL)

    assert report.rows_written == 15
    assert h.metric("k2_commit_oldest_event_age_seconds_count", table=TRADES) == 1
    assert h.metric("k2_commit_oldest_event_age_seconds_sum", table=TRADES) == pytest.approx(3.0)
    assert h.metric("k2_commit_oldest_event_wait_seconds_sum", table=TRADES) == pytest.approx(2.0)
    assert h.metric("k2_commit_oldest_event_age_seconds_count", table=QUOTES) == 0  # nothing committed there
    assert h.stores[TRADES_TOPIC].times(ChunkKey(ROWS, 0, 0, 4, 5)) is None  # forgotten with the chunk


async def test_crash_between_commit_and_cleanup_writes_nothing_twice(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.put_trades(2, range(0, 50))
    restored_before_cleanup = dict(h.trades.data)  # what the changelog held when the commit landed
    await h.flusher.flush(ALL)
    # The worker "died" before its tombstones were written: the next owner restores the chunk.
    h.trades.data.update(restored_before_cleanup)
    await h.put_trades(2, range(50, 60))
    report = await h.flusher.flush(ALL)
    [result] = report.results
    assert (result.rows_written, result.rows_dropped) == (10, 50)
    assert h.rows(TRADES) == [(2, o) for o in range(60)]
    assert h.metric("k2_rows_skipped_already_committed_total", table=TRADES) == 50


async def test_overlapping_chunks_from_a_reconsumed_batch_land_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.put_trades(0, range(0, 20))
    await h.put_trades(0, range(10, 30))  # re-consumed after a crash, cut into a different chunk
    await h.flusher.flush(ALL)
    assert h.rows(TRADES) == [(0, o) for o in range(30)]


async def test_only_owned_partitions_are_flushed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.put_trades(0, range(5))
    kept = await h.put_trades(1, range(5))
    await h.flusher.flush({(TRADES_TOPIC, 0): 5})
    assert h.rows(TRADES) == [(0, o) for o in range(5)]
    assert h.stores[TRADES_TOPIC].chunk_keys() == [kept]


async def test_nothing_at_or_above_the_durable_frontier_is_flushed(tmp_path: Path) -> None:
    """A chunk above a record whose own write is not acknowledged must wait: its mark would drop that record."""
    h = Harness(tmp_path)
    await h.put_trades(0, range(0, 10))
    later = await h.put_trades(0, range(10, 20))
    await h.flusher.flush({(TRADES_TOPIC, 0): 10})
    assert h.rows(TRADES) == [(0, o) for o in range(10)]
    assert h.stores[TRADES_TOPIC].chunk_keys() == [later]
    assert read_offsets(h.writer.table(TRADES, refresh=True)) == {(TRADES_TOPIC, 0): 9}
    await h.flusher.flush({(TRADES_TOPIC, 0): 20})
    assert h.rows(TRADES) == [(0, o) for o in range(20)]


async def test_a_chunk_for_two_tables_is_forgotten_only_when_both_have_it(tmp_path: Path) -> None:
    from k2.lake.arrow import companies_to_arrow
    from k2.lake.records import BufferedEvent
    from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS

    h = Harness(tmp_path)
    table = RecordingTable()
    store = ChunkStore(table, "ref")
    flusher = Flusher([SourceBuffer("ref", (COMPANY_VERSIONS, COMPANIES), store)], lambda: h.writer, h.metrics)
    h.writer.topics[COMPANY_VERSIONS] = h.writer.topics[COMPANIES] = "ref"
    events = [
        BufferedEvent("ref", 0, i, {"company_id": 7, "symbol": "BHP", "company_name": f"v{i}", "isin": "AU0",
                                    "start_date": "2001-01-01", "end_date": None})
        for i in range(3)
    ]  # fmt: skip
    key = ChunkKey(ROWS, 0, 0, 2, 3)
    await store.put(key, companies_to_arrow(events, 1_000))
    real_commit = h.writer.commit
    calls = {"n": 0}

    def flaky(table_name: str, *args: object, **kwargs: object) -> object:
        if table_name == COMPANIES and calls["n"] == 0:
            calls["n"] += 1
            raise OSError("catalog went away")
        return real_commit(table_name, *args, **kwargs)  # type: ignore[arg-type]

    h.writer.commit = flaky  # type: ignore[method-assign]
    report = await flusher.flush({("ref", 0): 3})
    assert COMPANIES in report.failed and store.chunk_keys() == [key]
    report = await flusher.flush({("ref", 0): 3})
    assert report.failed == {} and store.chunk_keys() == []
    versions = h.writer.table(COMPANY_VERSIONS, refresh=True).scan().to_arrow()
    assert sorted(versions["kafka_offset"].to_pylist()) == [0, 1, 2]  # once each, though flushed twice
    latest = h.writer.table(COMPANIES, refresh=True).scan().to_arrow().to_pylist()
    assert [(r["company_id"], r["company_name"], r["kafka_offset"]) for r in latest] == [(7, "v2", 2)]


async def test_rejects_of_all_sources_go_to_one_commit_with_per_topic_offsets(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.stores[TRADES_TOPIC].put(ChunkKey(REJECTS, 0, 4, 4, 1), rejects_to_arrow([reject(TRADES_TOPIC, 0, 4)]))
    await h.stores[QUOTES_TOPIC].put(ChunkKey(REJECTS, 0, 9, 9, 1), rejects_to_arrow([reject(QUOTES_TOPIC, 0, 9)]))
    report = await h.flusher.flush(ALL)
    assert [r.table_name for r in report.results] == [REJECTS_TABLE]
    table = h.writer.table(REJECTS_TABLE, refresh=True)
    assert read_offsets(table) == {(TRADES_TOPIC, 0): 4, (QUOTES_TOPIC, 0): 9}
    data = table.scan().to_arrow()
    assert sorted(data["source_topic"].to_pylist()) == [QUOTES_TOPIC, TRADES_TOPIC]
    assert len(table.history()) == 1


async def test_a_failing_table_keeps_its_chunks_and_others_proceed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path)
    await h.put_trades(0, range(3))
    qkey = ChunkKey(ROWS, 0, 0, 0, 1)
    await h.stores[QUOTES_TOPIC].put(qkey, events_to_arrow(TRADES, trade_events(0, range(1))))  # wrong shape for quotes
    report = await h.flusher.flush(ALL)
    assert QUOTES in report.failed and [r.table_name for r in report.results] == [TRADES]
    assert h.stores[QUOTES_TOPIC].chunk_keys() == [qkey]
    assert h.metric("k2_iceberg_commit_failures_total", table=QUOTES) == 1


async def test_a_table_recreated_under_the_flush_stops_the_flush_and_keeps_the_chunks(tmp_path: Path) -> None:
    """Unlike a failing table, a recreated one invalidates every mark: the flush raises TableRecreated for
    the pipeline to position its partitions again, and nothing is forgotten."""
    from k2.lake.schemas import TABLES
    from k2.lake.tables import ensure_table
    from k2.lake.writer import TableRecreated

    h = Harness(tmp_path)
    await h.put_trades(0, range(3))
    await h.flusher.flush(ALL)
    key = await h.put_trades(0, range(3, 6))
    h.writer.catalog.drop_table(TABLES[TRADES].name)
    ensure_table(h.writer.catalog, TABLES[TRADES])
    with pytest.raises(TableRecreated):
        await h.flusher.flush(ALL)
    assert h.stores[TRADES_TOPIC].chunk_keys() == [key]


def test_source_offsets_and_overlaps_are_per_topic_partition() -> None:
    def pc_(topic: str, p: int, first: int, last: int) -> PendingChunk:
        return PendingChunk(topic, ChunkKey(ROWS, p, first, last, last - first + 1), b"")

    chunks = [pc_("a", 0, 0, 9), pc_("a", 0, 10, 19), pc_("b", 0, 5, 15), pc_("a", 1, 0, 3)]
    assert source_offsets(chunks) == {("a", 0): 19, ("b", 0): 15, ("a", 1): 3}
    assert not overlaps(chunks)
    assert overlaps([*chunks, pc_("a", 0, 19, 25)])


async def test_sorted_by_time_then_sequence(tmp_path: Path) -> None:
    from k2.sink.batches import TableBatch, build_batch

    h = Harness(tmp_path)
    late = await h.put_trades(0, range(100, 110))
    early = await h.put_trades(1, range(0, 10))
    batch = TableBatch(
        TRADES, tuple(PendingChunk(TRADES_TOPIC, k, h.stores[TRADES_TOPIC].get(k)) for k in (late, early))
    )
    table = build_batch(batch)
    ts = table["exchange_timestamp"]
    assert pc.all(pc.greater_equal(ts[1:], ts[:-1])).as_py()


async def test_a_column_buffered_rows_hold_is_added_to_the_table_never_dropped(tmp_path: Path) -> None:
    """Issue 17, seen: rows buffered with an evolved column (trade_id) were committed to a table created
    again without it, and the flush conformed the column away: values gone, the audit green."""
    import pyarrow as pa

    from k2.errors import TableSchemaMismatch
    from k2.sink.batches import TableBatch, build_batch

    h = Harness(tmp_path)
    key = ChunkKey(ROWS, 0, 0, 2, 3)
    rows = events_to_arrow(TRADES, trade_events(0, range(3)))
    rows = rows.append_column("trade_id", pa.array(["T0", None, "T2"], pa.string()))
    await h.stores[TRADES_TOPIC].put(key, rows)
    chunk = PendingChunk(TRADES_TOPIC, key, h.stores[TRADES_TOPIC].get(key))
    with pytest.raises(TableSchemaMismatch, match="trade_id"):
        build_batch(TableBatch(TRADES, (chunk,)), h.writer.arrow_schema(TRADES))
    await h.flusher.flush(ALL)
    table = h.writer.table(TRADES, refresh=True)
    assert table.schema().find_field("trade_id").required is False
    landed = table.scan().to_arrow().sort_by("kafka_offset")
    assert landed["trade_id"].to_pylist() == ["T0", None, "T2"]


def test_forgetting_a_table_forgets_its_schema_applied_writer_schemas_and_marks(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.writer.table(TRADES)
    state = h.writer.state.of(TRADES)
    state.applied.add(7)
    state.marks[(TRADES_TOPIC, 0)] = 41
    assert h.writer.state.marks() == {(TRADES_TOPIC, 0): 41}
    h.writer.forget_tables()
    fresh = h.writer.state.of(TRADES)
    assert fresh.table is None and fresh.applied == set() and fresh.marks == {}
    assert h.writer.state.marks() == {}


async def test_the_tables_of_one_flush_commit_side_by_side(tmp_path: Path) -> None:
    """A flush's freshness is its slowest table's commit, not the sum of them: each table commits in
    its own thread. Two commits that each wait for the other finish only if they run at once."""
    import threading

    h = Harness(tmp_path)
    await h.put_trades(0, range(3))
    await h.stores[QUOTES_TOPIC].put(
        ChunkKey(ROWS, 0, 0, 2, 3),
        events_to_arrow(QUOTES, [BufferedEvent(QUOTES_TOPIC, 0, o, quote(sequence_number=o)) for o in range(3)]),
    )
    both_in = threading.Barrier(2, timeout=10)
    commit = h.writer.commit

    def meeting_commit(*args: object, **kwargs: object) -> object:
        both_in.wait()  # raises BrokenBarrierError when the other table's commit never starts meanwhile
        return commit(*args, **kwargs)  # type: ignore[arg-type]

    h.writer.commit = meeting_commit  # type: ignore[method-assign]
    report = await h.flusher.flush(ALL)
    assert report.failed == {}
    assert sorted(r.table_name for r in report.results) == sorted([TRADES, QUOTES])
    assert h.rows(TRADES) == [(0, 0), (0, 1), (0, 2)] and h.rows(QUOTES) == [(0, 0), (0, 1), (0, 2)]
    assert h.stores[TRADES_TOPIC].chunk_keys() == [] and h.stores[QUOTES_TOPIC].chunk_keys() == []
