"""The worker's producer against the real broker: what its metadata follows, and changelog writes sent in batches.

Issue 19: a worker's producer asked for the metadata of every topic of the cluster every 30 s
(decoded on the event loop), and sent each small changelog record with a delivery of its
own. Both are checked here with aiokafka's producer and the stack's broker, read back with
a plain consumer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2.buffer.changelog import ChangelogWriter
from k2.kafka.metadata import producer_partitions
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


@dataclass
class FaustLikeProducer:
    """What k2 reaches on faust's producer: ``_ensure_producer()``, the aiokafka producer it wraps."""

    producer: AIOKafkaProducer

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.producer


class Changelog:
    """The table and changelog topic ChangelogWriter touches: the topic's name, its app's producer, raw keys."""

    key_serializer = "raw"

    def __init__(self, name: str, producer: FaustLikeProducer) -> None:
        self.name = name
        self.changelog_topic = self
        self.app = self
        self.producer = producer

    def get_topic_name(self) -> str:
        return self.name

    def prepare_key(self, key: bytes, serializer: Any) -> tuple[bytes, None]:
        return key, None


def _create(stack: Stack, *names: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)


@pytest.fixture
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", request_timeout_ms=30_000)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_the_producer_follows_the_topics_k2_asks_about_not_the_whole_cluster(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    run = uuid.uuid4().hex[:8]
    ours, other = f"w{run}.changelog", f"w{run}.someone-elses"
    _create(stack, ours, other)
    client = producer.client
    await client.force_metadata_update()
    assert {ours, other} <= client.cluster.topics(), "following nothing, aiokafka asks for every topic"
    assert await producer_partitions(FaustLikeProducer(producer), ours, refresh=True) == {0, 1, 2}
    await client.force_metadata_update()  # what the refresh every metadata_max_age_ms asks for from now on
    assert client.cluster.topics() == {ours}
    # A topic written to that nobody asked about (the rejects topic) is followed from its first send.
    await (await producer.send(other, b"v", partition=1))
    await client.force_metadata_update()
    assert client.cluster.topics() == {ours, other}


async def test_changelog_records_sent_in_batches_land_in_order_with_one_delivery_per_batch(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    name = f"w{uuid.uuid4().hex[:8]}.state-changelog"
    _create(stack, name)
    writer = ChangelogWriter(Changelog(name, FaustLikeProducer(producer)))
    # More than one batch holds (16 KiB each by default), tombstones among them.
    records: list[tuple[bytes, bytes | None]] = [
        (b"k%05d" % i, None if i % 97 == 0 else b"v%05d-" % i + b"x" * 180) for i in range(400)
    ]
    futures = await writer.send_many(2, records)
    assert 1 < len(futures) < len(records) // 10
    await asyncio.gather(*futures)
    assert await writer.send_many(2, []) == []

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(name, 2)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[tuple[bytes | None, bytes | None]] = []
        while len(got) < len(records):
            batch = await consumer.getmany(tp, timeout_ms=5_000)
            assert batch, f"only {len(got)} of {len(records)} records came back"
            got.extend((r.key, r.value) for r in batch[tp])
        assert got == records
        others = await consumer.end_offsets([TopicPartition(name, p) for p in (0, 1)])
        assert set(others.values()) == {0}, "every record went to the partition named"
    finally:
        await consumer.stop()
