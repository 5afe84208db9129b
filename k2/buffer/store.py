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
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import ChunkKey, to_ipc

__all__ = ["ChunkStore"]


class ChunkStore:
    """Chunks of one source topic, over a Faust table (``key: str``, ``value: bytes`` raw)."""

    def __init__(self, table: Any, topic: str, *, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.topic = topic
        self.clock = clock
        self.changelog = ChangelogWriter(table)
        # Per chunk put here (not restored): the oldest Kafka timestamp of its batch (ms, None when the
        # records carry none) and when it was put (``clock``). In memory only, for the freshness metrics.
        self._times: dict[str, tuple[int | None, float]] = {}
        # Keys are parsed after every batch to count buffered rows: each once, and remembered only while
        # its chunk is here (a cache of every key ever seen grows with uptime: one per batch and partition).
        self._parsed: dict[str, ChunkKey] = {}

    @property
    def _data(self) -> Any:
        return self.table.data

    async def put(self, key: ChunkKey, chunk: pa.Table, produced_ms: int | None = None) -> asyncio.Future[Any]:
        """Store a chunk locally and send it to the changelog; returns the delivery to wait for.

        ``produced_ms``: the oldest Kafka timestamp of the records the chunk comes from (see :meth:`times`).
        """
        text = key.encode()
        blob = to_ipc(chunk)
        self._data[text] = blob
        self._times[text] = (produced_ms, self.clock())
        return await self.changelog.send(key.partition, text, blob)

    def times(self, key: ChunkKey) -> tuple[int | None, float] | None:
        """(oldest Kafka timestamp in ms or None, when it was put) of a chunk put here; None for a restored one."""
        return self._times.get(key.encode())

    async def remove(self, keys: Iterable[ChunkKey]) -> list[asyncio.Future[Any]]:
        """Forget chunks, locally and in the changelog (tombstones): after their rows landed, or untrusted ones."""
        data = self._data
        tombstones: dict[int, list[tuple[str, None]]] = {}
        for key in keys:
            text = key.encode()
            if text in data:
                del data[text]
            self._times.pop(text, None)
            tombstones.setdefault(key.partition, []).append((text, None))
        futures = []
        for partition, records in tombstones.items():
            futures.extend(await self.changelog.send_many(partition, records))
        return futures

    def drop_local(self, partitions: set[int]) -> int:
        """Forget the local copies of ``partitions``' chunks (no tombstones: their changelog stays); rows dropped."""
        data = self._data
        rows = 0
        for key in self.iter_keys():
            if key.partition in partitions:
                rows += key.rows
                del data[key.encode()]
                self._times.pop(key.encode(), None)
        return rows

    def iter_keys(self) -> list[ChunkKey]:
        """Chunk keys held here, unordered (for counting: read after every batch).

        The table's data changes outside this class too (a restore from the changelog), so what is
        parsed is matched to the keys present at each call, and a key gone is forgotten.
        """
        known = self._parsed
        self._parsed = {text: known.get(text) or ChunkKey.decode(text) for text in list(self._data.keys())}
        if len(self._times) > len(self._parsed):  # chunks that left otherwise (a restore replaced the data)
            self._times = {text: t for text, t in self._times.items() if text in self._parsed}
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
