"""Durable writes to a Faust table's changelog, for state that must survive a crash.

Why not ``table[k] = v`` or ``table.send_changelog(...)``: both go through Faust's
``send_soon`` buffer, and the flush Faust runs before committing consumer offsets gives
up on that buffer after 0.1 s without progress (``ProducerBuffer.flush_atmost``). Under
load, offsets could then be committed for events whose changelog record was never sent:
a crash at that moment loses them. K2 instead hands each record to the Kafka producer
directly and waits for the broker's acknowledgement (acks=all) before the events behind
it are acked — once per chunk, not per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

__all__ = ["ChangelogWriter", "wait_all"]


class ChangelogWriter:
    """Sends records to one table's changelog; :meth:`wait` until the broker has them all."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._pending: list[Awaitable[Any]] = []

    async def send(self, partition: int, key: Any, value: Any, value_serializer: str | None = "raw") -> None:
        """Queue ``key -> value`` (``None``: a tombstone) for the changelog partition ``partition``.

        ``value_serializer`` is ``raw`` for bytes; ``None`` uses the table's own (e.g. a faust Record).
        """
        fut = await self.table.changelog_topic.send(
            key=key,
            value=value,
            partition=partition,
            key_serializer=self.table.key_serializer,
            value_serializer="raw" if value is None else (value_serializer or self.table.value_serializer),
            callback=self.table._on_changelog_sent,
        )
        self._pending.append(fut)

    async def wait(self) -> None:
        """Return once every record sent so far is acknowledged by the broker (raises if one failed)."""
        pending, self._pending = self._pending, []
        await wait_all(pending)


async def wait_all(futures: Iterable[Awaitable[Any]]) -> None:
    futs = list(futures)
    if futs:
        await asyncio.gather(*futs)
