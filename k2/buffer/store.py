"""The buffer of one source topic: Arrow chunks in a changelog-backed Faust table.

Why a chunk per write and not ``table[k] = v`` per event: every set writes the whole
value to the changelog, so per-event updates of a growing list cost O(n^2) bytes. A
chunk is written once, whole, when its events are acked; it is deleted (a tombstone)
only after its rows are committed to Iceberg. A worker that dies, or loses the
partition in a rebalance, loses nothing: the next owner restores the chunks from the
changelog and flushes them, and the offsets recorded in Iceberg drop what was already
committed.

Writes name their changelog partition explicitly (the source partition of the chunk,
with which the table is co-partitioned), because a micro-batch spans partitions and has
no single "current event"; and they are awaited until the broker has them (see
:mod:`k2.buffer.changelog`) before the batch's events are acked.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import pyarrow as pa

from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import ChunkKey, to_ipc

__all__ = ["ChunkStore"]

#: Keys are parsed after every micro-batch to count buffered rows; each key is parsed once.
_parse_key = lru_cache(maxsize=1 << 16)(ChunkKey.decode)


class ChunkStore:
    """Chunks of one source topic, over a Faust table (``key: str``, ``value: bytes`` raw)."""

    def __init__(self, table: Any, topic: str) -> None:
        self.table = table
        self.topic = topic
        self.changelog = ChangelogWriter(table)

    async def put(self, key: ChunkKey, chunk: pa.Table) -> None:
        """Store a chunk locally and send it to the changelog; :meth:`durable` waits for the broker."""
        text = key.encode()
        blob = to_ipc(chunk)
        self.table.data[text] = blob
        await self.changelog.send(key.partition, text, blob)

    async def remove(self, keys: Iterable[ChunkKey]) -> None:
        """Forget flushed chunks, locally and in the changelog (tombstones)."""
        data = self.table.data
        for key in keys:
            text = key.encode()
            if text in data:
                del data[text]
            await self.changelog.send(key.partition, text, None)

    async def durable(self) -> None:
        """Wait until every chunk put or removed so far is acknowledged by the broker."""
        await self.changelog.wait()

    def iter_keys(self) -> list[ChunkKey]:
        """Chunk keys held here, unordered (for counting: read after every micro-batch)."""
        return [_parse_key(text) for text in list(self.table.data.keys())]

    def chunk_keys(self, partitions: set[int] | None = None) -> list[ChunkKey]:
        """Chunk keys held here, in (kind, partition, offset) order, limited to ``partitions`` if given."""
        out = [key for key in self.iter_keys() if partitions is None or key.partition in partitions]
        out.sort()
        return out

    def get(self, key: ChunkKey) -> bytes:
        value: bytes = self.table.data[key.encode()]
        return value

    def buffered_rows(self, kind: str | None = None) -> int:
        return sum(k.rows for k in self.iter_keys() if kind is None or k.kind == kind)
