"""Writes to a Faust table's changelog that K2 tracks until the broker has them.

Why not ``table[k] = v`` or ``table.send_changelog(...)``: both go through Faust's
``send_soon`` buffer, and the flush Faust runs before committing consumer offsets gives
up on that buffer after 0.1 s without progress (``ProducerBuffer.flush_atmost``). Under
load, offsets could then be committed for events whose changelog record was never sent.
K2 hands each record to the Kafka producer directly and keeps the delivery future: the
pipeline's :class:`~k2.pipeline.ledger.Ledger` moves a partition's commit offset past a
batch only once every future of the batch has completed (acks=all).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ChangelogWriter"]


class ChangelogWriter:
    """Sends records to one table's changelog, naming the partition explicitly."""

    def __init__(self, table: Any) -> None:
        self.table = table

    async def send(
        self, partition: int, key: Any, value: Any, value_serializer: str | None = "raw"
    ) -> asyncio.Future[Any]:
        """Queue ``key -> value`` (``None``: a tombstone) for changelog partition ``partition``; returns its delivery.

        ``value_serializer`` is ``raw`` for bytes; ``None`` uses the table's own (e.g. a faust Record).
        The write goes to the changelog topic directly (see the module docstring), so faust's
        bookkeeping of what it sent (``Table._on_changelog_sent``, which only persists offsets
        for on-disk stores) is not involved. Raw values go straight to the producer, with the
        key serialised as the table serialises it (what a restore reads back): faust's own
        ``Topic.send`` costs more than the write itself for the small values of sequence state.
        """
        topic = self.table.changelog_topic
        if value is not None and value_serializer is None:
            fut = await topic.send(
                key=key,
                value=value,
                partition=partition,
                key_serializer=self.table.key_serializer,
                value_serializer=self.table.value_serializer,
                force=True,
            )
            return asyncio.ensure_future(fut)
        key_bytes, _ = topic.prepare_key(key, self.table.key_serializer)
        sent = await topic.app.producer.send(topic.get_topic_name(), key_bytes, value, partition, None, None)
        return asyncio.ensure_future(sent)
