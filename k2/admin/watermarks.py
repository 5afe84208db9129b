"""End offsets of the source topics, read with a short-lived confluent-kafka consumer."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.lake.records import TopicPartition as TP
from k2.settings import Settings

__all__ = ["end_offsets"]


def end_offsets(settings: Settings, topics: Iterable[str], timeout_s: float = 10.0) -> dict[TP, int]:
    """The high watermark (next offset to be written) of every partition of ``topics``."""
    errors = ConnectErrors()
    consumer = Consumer(
        client_conf(settings, errors=errors, **{"group.id": "k2-admin-watermarks", "enable.auto.commit": False})
    )
    try:
        out: dict[TP, int] = {}
        metadata = cluster_metadata(consumer, settings, errors, timeout_s)
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for partition in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                out[(topic, partition)] = high
        return out
    except KafkaException as exc:
        raise errors.unavailable(settings, consumer) from exc
    finally:
        consumer.close()
