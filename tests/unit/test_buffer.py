"""Chunk keys, Arrow IPC round trips and the chunk store's changelog traffic."""

from __future__ import annotations

import gc

import pyarrow as pa
import pytest

from k2.buffer.chunks import COMPRESS_FROM_ROWS, REJECTS, ROWS, ChunkKey, from_ipc, to_ipc
from k2.buffer.store import ChunkStore
from k2.lake.arrow import events_to_arrow
from k2.lake.schemas import TRADES
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.lake_helpers import trade_events


def test_chunk_key_round_trip_and_order() -> None:
    a = ChunkKey(ROWS, 1, 10, 19, 10)
    b = ChunkKey(ROWS, 1, 20, 29, 10)
    assert ChunkKey.decode(a.encode()) == a
    assert sorted([b, a]) == [a, b]
    assert a.encode() == "rows:1:10:19:10"


@pytest.mark.parametrize("text", ["", "rows:1:2:3", "other:1:2:3:4", "rows:1:9:3:4", "rows:x:1:2:3"])
def test_chunk_key_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        ChunkKey.decode(text)


def test_ipc_round_trip_is_exact() -> None:
    table = events_to_arrow(TRADES, trade_events(0, range(5)))
    again = from_ipc(to_ipc(table))
    assert again.equals(table) and again.schema.equals(table.schema)


def _plain(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_live_batchs_chunk_is_not_compressed_a_backlogs_is() -> None:
    """Issue 19: LZ4 costs ~140 us a chunk whatever its size (a buffer at a time), 15 times what a chunk of
    a live batch (tens of rows) costs uncompressed; at thousands of rows it pays for itself."""
    small = events_to_arrow(TRADES, trade_events(0, range(COMPRESS_FROM_ROWS - 1)))
    large = events_to_arrow(TRADES, trade_events(0, range(COMPRESS_FROM_ROWS)))
    assert to_ipc(small) == _plain(small)
    assert len(to_ipc(large)) < len(_plain(large)) / 2
    assert from_ipc(to_ipc(small)).equals(small) and from_ipc(to_ipc(large)).equals(large)


async def test_store_writes_one_changelog_record_per_chunk_and_tombstones_on_remove() -> None:
    table = RecordingTable()
    store = ChunkStore(table, "market.trades.raw")
    chunk = events_to_arrow(TRADES, trade_events(3, range(100)))
    key = ChunkKey(ROWS, 3, 0, 99, 100)
    delivered = [await store.put(key, chunk), await store.put(ChunkKey(REJECTS, 3, 100, 100, 1), pa.table({"x": [1]}))]
    assert all(f.done() for f in delivered)  # the broker's acknowledgements, for the ledger to wait on
    assert [(p, k) for p, k, _ in table.changelog] == [(3, key.encode()), (3, "rejects:3:100:100:1")]
    assert store.buffered_rows() == 101 and store.buffered_rows({2}) == 0
    assert store.chunk_keys({2}) == []
    tombstones = await store.remove([key])
    assert len(tombstones) == 1
    assert table.changelog[-1] == (3, key.encode(), None)
    assert store.chunk_keys() == [ChunkKey(REJECTS, 3, 100, 100, 1)]
    assert list(table.restore_from_changelog()) == ["rejects:3:100:100:1"]


async def test_tombstones_go_per_partition_in_batches_in_the_order_given() -> None:
    """Issue 19: small changelog records go as few Kafka batches as hold them, one delivery per batch."""
    table = RecordingTable()
    store = ChunkStore(table, "market.trades.raw")
    keys = [ChunkKey(ROWS, p, o, o, 1) for o in range(10) for p in (4, 1)]  # partitions interleaved
    for key in keys:
        await store.put(key, pa.table({"x": [1]}))
    sent = len(table.changelog)
    deliveries = await store.remove(keys)
    tombstones = table.changelog[sent:]
    for p in (4, 1):  # each partition's in the order given (a restore reads a partition in order)
        wanted = [(p, k.encode()) for k in keys if k.partition == p]
        assert [(q, k) for q, k, v in tombstones if q == p and v is None] == wanted
    assert len(tombstones) == len(keys) and store.chunk_keys() == []
    batches = table.producer.batches
    assert batches == [(4, 7), (4, 3), (1, 7), (1, 3)] and len(deliveries) == len(batches)
    assert all(f.done() for f in deliveries)
    assert await store.remove([]) == []


async def test_dropping_local_copies_sends_nothing() -> None:
    table = RecordingTable()
    store = ChunkStore(table, "market.trades.raw")
    await store.put(ChunkKey(ROWS, 1, 0, 9, 10), pa.table({"x": list(range(10))}))
    await store.put(ChunkKey(ROWS, 2, 0, 4, 5), pa.table({"x": list(range(5))}))
    sent = len(table.changelog)
    assert store.drop_local({1}) == 10
    assert len(table.changelog) == sent and store.chunk_keys() == [ChunkKey(ROWS, 2, 0, 4, 5)]


async def test_a_store_keeps_no_parsed_key_of_chunks_it_no_longer_holds() -> None:
    """Keys are parsed after every batch; what is remembered of them goes with their chunk (a worker runs for weeks)."""
    table = RecordingTable()
    store = ChunkStore(table, "market.trades.raw")
    chunk = pa.table({"x": [1]})

    def parsed_keys() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is ChunkKey)

    before = parsed_keys()
    for batch in range(200):
        keys = [ChunkKey(ROWS, p, batch, batch, 1) for p in range(6)]
        for key in keys:
            await store.put(key, chunk)
        assert store.buffered_rows() == 6  # parses every key held
        await store.remove(keys)
        del keys, key
    assert store.buffered_rows() == 0
    assert parsed_keys() - before < 10
