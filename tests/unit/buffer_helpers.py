"""A stand-in for a Faust table's store and changelog topic, for unit tests of the buffer and sink.

Only what :class:`k2.buffer.store.ChunkStore` touches: ``data`` (the local store), the
changelog topic's ``send`` (recorded; delivery is immediate) and the serializer names.
The real Faust table and broker are exercised end to end by the integration tests.
"""

from __future__ import annotations

import asyncio
from typing import Any


class RecordingTable:
    key_serializer = "json"
    value_serializer = "raw"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.changelog: list[tuple[int | None, str, bytes | None]] = []
        self.changelog_topic = self
        self.app = self
        self.producer = _Producer(self)

    def get_topic_name(self) -> str:
        return "recording-changelog"

    def prepare_key(self, key: str, serializer: Any) -> tuple[str, None]:
        return key, None

    async def send(self, *, key: str, value: bytes | None, partition: int | None, **_: Any) -> asyncio.Future[None]:
        self.changelog.append((partition, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def restore_from_changelog(self) -> dict[str, bytes]:
        """What a new owner would rebuild from the changelog (last value per key, tombstones delete)."""
        state: dict[str, bytes] = {}
        for _, key, value in self.changelog:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state


class _Producer:
    """What faust's and aiokafka's producers do for :class:`k2.buffer.changelog.ChangelogWriter`: record, deliver.

    ``send`` is faust's; ``_ensure_producer`` gives the aiokafka producer, whose ``create_batch``
    makes a batch of at most :attr:`BATCH_RECORDS` records (aiokafka's are bounded in bytes),
    and ``send_batch`` records the batch's records in order.
    """

    BATCH_RECORDS = 7

    def __init__(self, table: RecordingTable) -> None:
        self.table = table
        self.batches: list[tuple[int, int]] = []
        """(partition, records) of each batch sent."""

    def _ensure_producer(self) -> _Producer:
        return self

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        assert topic == self.table.get_topic_name() and batch, "a batch sent holds records"
        self.batches.append((partition, len(batch)))
        for key, value in batch:
            await self.table.send(key=key, value=value, partition=partition)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send(
        self, topic: str, key: str, value: bytes | None, partition: int | None, timestamp: Any, headers: Any
    ) -> asyncio.Future[None]:
        return await self.table.send(key=key, value=value, partition=partition)


class _Batch(list[tuple[Any, "bytes | None"]]):
    def append(self, *, key: Any, value: bytes | None, timestamp: int | None) -> object | None:  # type: ignore[override]
        if len(self) >= _Producer.BATCH_RECORDS:
            return None
        super().append((key, value))
        return object()
