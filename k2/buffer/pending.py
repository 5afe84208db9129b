"""State writes held back and sent together: one record per key, however many batches changed it.

A live batch is small (a fetch's worth of one partition), and sequence tracking changes a head
and a window block for almost every key it touches: sent per batch, that is about two changelog
records per event. Held here until :meth:`PendingWrites.send`, a key changed by many batches
costs one record, its last value.

The batches wait for it: :meth:`PendingWrites.add` gives a batch a future for its
partition that completes once the send that carries its changes is acknowledged (or fails,
with the send's error). The pipeline's ledger counts the batch durable only then, so the
changelog never holds less than what the committed offsets and the flushed chunks imply: a
crash before the send loses state only of batches that were not durable, which are read
again from Kafka. The pipeline sends before each flush, before a revocation or a shutdown
waits for durability, and when the ledger has too many batches waiting.

A send keeps the order that makes a crash in the middle of it harmless
(:mod:`k2.sequence.book`): window blocks, then heads, then deletions, each key's last value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from k2.buffer.changelog import ChangelogWriter

__all__ = ["PendingWrites", "write_order"]

Change = tuple[int, str, bytes | None]
"""``(partition, key, value)``; ``None`` deletes."""


def write_order(key: str, value: bytes | None) -> int:
    """Window blocks (``w|``) first, then heads, then deletions (see :mod:`k2.sequence.book`)."""
    if value is None:
        return 2
    return 0 if key.startswith("w|") else 1


class PendingWrites:
    """The changes of one table's changelog not sent yet, and the batches waiting for them."""

    def __init__(self, changelog: ChangelogWriter) -> None:
        self.changelog = changelog
        self._values: dict[tuple[int, str], bytes | None] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._sending = asyncio.Lock()
        """One send at a time (a flush and a full ledger may both ask): a send that began later could
        otherwise hand a key's newer value to the producer before an earlier send hands its older one."""

    def __len__(self) -> int:
        return len(self._values)

    def add(self, changes: Iterable[Change]) -> list[asyncio.Future[None]]:
        """Hold ``changes`` (a key's later value replaces its earlier one); returns what their batch waits for.

        Per partition changed, a future that completes when the send carrying these changes has them
        acknowledged (or one of them fails). Taken here, with the changes, never after an ``await``:
        a send that began in between carries the changes, and the next one might not hold the
        partition at all and complete at once.
        """
        values = self._values
        partitions: set[int] = set()
        for partition, key, value in changes:
            values[(partition, key)] = value
            partitions.add(partition)
        return [self._settled(partition) for partition in sorted(partitions)]

    def _settled(self, partition: int) -> asyncio.Future[None]:
        fut = self._waiting.get(partition)
        if fut is None:
            fut = self._waiting[partition] = asyncio.get_running_loop().create_future()
        return fut

    async def send(self) -> list[asyncio.Future[Any]]:
        """Send what is held, in crash-safe order; returns the deliveries. Changes added meanwhile wait for the next."""
        async with self._sending:
            values, self._values = self._values, {}
            waiting, self._waiting = self._waiting, {}
            sent: dict[int, list[asyncio.Future[Any]]] = {}
            try:
                for (partition, key), value in sorted(values.items(), key=lambda kv: write_order(kv[0][1], kv[1])):
                    sent.setdefault(partition, []).append(await self.changelog.send(partition, key, value))
            except BaseException as exc:  # nothing held is known to be written: the batches waiting are not durable
                for fut in waiting.values():
                    if isinstance(exc, Exception):
                        _fail(fut, exc)
                    else:
                        fut.cancel()
                raise
            for partition, fut in waiting.items():
                _settle_when(fut, sent.get(partition, []))
            return [f for futures in sent.values() for f in futures]

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what is held for ``partitions`` (revoked: their changelog partitions are another worker's now)."""
        gone = set(partitions)
        self._values = {k: v for k, v in self._values.items() if k[0] not in gone}
        for partition in gone:
            fut = self._waiting.pop(partition, None)
            if fut is not None:
                fut.cancel()


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _settle_when(waiter: asyncio.Future[None], deliveries: list[asyncio.Future[Any]]) -> None:
    """Complete ``waiter`` once every delivery is done: with the first failure, else with None."""
    if not deliveries:
        if not waiter.done():
            waiter.set_result(None)
        return
    remaining = len(deliveries)

    def done(fut: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if waiter.done():
            return
        if fut.cancelled():
            waiter.set_exception(RuntimeError("a state write was cancelled"))
        elif fut.exception() is not None:
            waiter.set_exception(fut.exception())  # type: ignore[arg-type]
        elif remaining == 0:
            waiter.set_result(None)

    for fut in deliveries:
        fut.add_done_callback(done)
