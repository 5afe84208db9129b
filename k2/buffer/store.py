"""The buffer of one source topic: Arrow chunks in a changelog-backed Faust table.

Why a chunk per write and not ``table[k] = v`` per event: every set writes the whole
value to the changelog, so per-event updates of a growing list cost O(n^2) bytes. A
chunk is written once, whole, when its batch is taken; it is deleted (a tombstone) only
after its rows are committed to Iceberg. A worker that dies, or loses the partition in a
rebalance, loses nothing: the next owner restores the chunks from the changelog and
flushes those below the partition's start position (see :mod:`k2.pipeline.positions`);
the offsets recorded in Iceberg drop what was committed already.

Writes name their changelog partition explicitly (the source partition of the chunk, with
which the table is co-partitioned), and return the broker's delivery future, which the
pipeline's ledger waits for before the batch's offsets may be committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import ChunkKey, to_ipc

__all__ = ["ChunkStore"]


class ChunkStore:
    """Chunks of one source topic, over a Faust table (``key: str``, ``value: bytes`` raw)."""

    def __init__(self, table: Any, topic: str) -> None:
        self.table = table
        self.topic = topic
        self.changelog = ChangelogWriter(table)
        # Keys are parsed after every batch to count buffered rows: each once, and remembered only while
        # its chunk is here (a cache of every key ever seen grows with uptime: one per batch and partition).
        self._parsed: dict[str, ChunkKey] = {}

    @property
    def _data(self) -> Any:
        return self.table.data

    async def put(self, key: ChunkKey, chunk: pa.Table) -> asyncio.Future[Any]:
        """Store a chunk locally and send it to the changelog; returns the delivery to wait for."""
        text = key.encode()
        blob = to_ipc(chunk)
        self._data[text] = blob
        return await self.changelog.send(key.partition, text, blob)

    async def remove(self, keys: Iterable[ChunkKey]) -> list[asyncio.Future[Any]]:
        """Forget chunks, locally and in the changelog (tombstones): after their rows landed, or untrusted ones."""
        data = self._data
        futures = []
        for key in keys:
            text = key.encode()
            if text in data:
                del data[text]
            futures.append(await self.changelog.send(key.partition, text, None))
        return futures

    def drop_local(self, partitions: set[int]) -> int:
        """Forget the local copies of ``partitions``' chunks (no tombstones: their changelog stays); rows dropped."""
        data = self._data
        rows = 0
        for key in self.iter_keys():
            if key.partition in partitions:
                rows += key.rows
                del data[key.encode()]
        return rows

    def iter_keys(self) -> list[ChunkKey]:
        """Chunk keys held here, unordered (for counting: read after every batch).

        The table's data changes outside this class too (a restore from the changelog), so what is
        parsed is matched to the keys present at each call, and a key gone is forgotten.
        """
        known = self._parsed
        self._parsed = {text: known.get(text) or ChunkKey.decode(text) for text in list(self._data.keys())}
        return list(self._parsed.values())

    def chunk_keys(self, partitions: set[int] | None = None) -> list[ChunkKey]:
        """Chunk keys held here, in (kind, partition, offset) order, limited to ``partitions`` if given."""
        out = [key for key in self.iter_keys() if partitions is None or key.partition in partitions]
        out.sort()
        return out

    def get(self, key: ChunkKey) -> bytes:
        value: bytes = self._data[key.encode()]
        return value

    def buffered_rows(self, partitions: set[int] | None = None, kinds: frozenset[str] | None = None) -> int:
        """Rows held here (of ``partitions`` and chunk ``kinds``, if given)."""
        return sum(
            k.rows
            for k in self.iter_keys()
            if (partitions is None or k.partition in partitions) and (kinds is None or k.kind in kinds)
        )
