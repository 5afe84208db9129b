"""What the worker's producer knows of a topic's partitions, refreshed on demand.

aiokafka's producer refuses a record for a partition its metadata does not list ("Unrecognized
partition") and refreshes that metadata only every ``producer_metadata_max_age_ms``. After a
changelog topic grew (:mod:`k2.admin.growth`), a partition's first write must wait until the
producer knows the new partitions, or it would fail and stop the partition: positioning asks
here first, refreshing the producer's metadata when a partition is missing.

Private names used (pinned by ``tests/unit/test_kafka_consumer.py``): faust's
``Producer._ensure_producer`` (the aiokafka producer it wraps; its ``client`` and the client's
``cluster`` and ``force_metadata_update`` are aiokafka's public attributes).
"""

from __future__ import annotations

from typing import Any

__all__ = ["producer_partitions"]


async def producer_partitions(producer: Any, topic: str, *, refresh: bool = False) -> set[int]:
    """The partitions of ``topic`` the producer can write to (refreshing its metadata first if asked)."""
    client = producer._ensure_producer().client
    if refresh:
        await client.force_metadata_update()
    return set(client.cluster.partitions_for_topic(topic) or ())
