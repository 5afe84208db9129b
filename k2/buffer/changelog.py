"""Writes to a Faust table's changelog that K2 tracks until the broker has them.

Why not ``table[k] = v`` or ``table.send_changelog(...)``: both go through Faust's
``send_soon`` buffer, and the flush Faust runs before committing consumer offsets gives
up on that buffer after 0.1 s without progress (``ProducerBuffer.flush_atmost``). Under
load, offsets could then be committed for events whose changelog record was never sent.
K2 hands each record to the Kafka producer directly and keeps the delivery future: the
pipeline's :class:`~k2.pipeline.ledger.Ledger` moves a partition's commit offset past a
batch only once every future of the batch has completed (acks=all).

Many small raw records for one partition (a batch's sequence state, a flush's tombstones)
go as Kafka record batches K2 fills itself (:meth:`ChangelogWriter.send_many`): one
delivery per record batch, not per record, which is most of what a send cost. The aiokafka
producer is reached through faust's ``Producer._ensure_producer`` (private, pinned by
``tests/unit/test_growth.py``); ``create_batch`` and ``send_batch`` are aiokafka's public
API. aiokafka queues a partition's records and batches in the order they were handed over,
whichever way they came, and sends them in that order, so the order a restore relies on
holds (``tests/integration/test_producer_writes.py`` reads a partition back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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

    async def send_many(self, partition: int, records: Sequence[tuple[Any, bytes | None]]) -> list[asyncio.Future[Any]]:
        """Queue raw ``key -> value`` records (``None``: a tombstone) for ``partition``, in order; their deliveries.

        As few record batches as the producer's batch size holds: each record's delivery is its
        batch's. The keys are serialised as :meth:`send` does.
        """
        if not records:
            return []
        topic = self.table.changelog_topic
        name = topic.get_topic_name()
        producer = topic.app.producer._ensure_producer()
        futures: list[asyncio.Future[Any]] = []
        builder = producer.create_batch()
        for key, value in records:
            key_bytes, _ = topic.prepare_key(key, self.table.key_serializer)
            if builder.append(key=key_bytes, value=value, timestamp=None) is None:  # full: send it, start the next
                futures.append(asyncio.ensure_future(await producer.send_batch(builder, name, partition=partition)))
                builder = producer.create_batch()
                builder.append(key=key_bytes, value=value, timestamp=None)  # an empty batch takes any one record
        futures.append(asyncio.ensure_future(await producer.send_batch(builder, name, partition=partition)))
        return futures
