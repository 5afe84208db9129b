"""The Faust objects K2 declares (topics, buffer tables, the flush channel) and the runtime.

Each buffer table is co-partitioned with its source topic (same partition count), so
Faust assigns a chunk's changelog partition to the worker that owns its source partition.
"""

from __future__ import annotations

from typing import Any

import faust

from k2.app import app
from k2.buffer.store import ChunkStore
from k2.lake.records import RejectRecord
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.runtime import Runtime
from k2.settings import get_settings

settings = get_settings()


def _raw_topic(name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


trades_topic = _raw_topic(settings.trades_topic)
quotes_topic = _raw_topic(settings.quotes_topic)
reference_topic = _raw_topic(settings.reference_topic)
rejects_topic = _raw_topic(settings.rejects_topic)


def bytes_table(name: str, partitions: int, help: str) -> Any:
    """A changelog-backed table of raw bytes by string key, with as many partitions as its source topic."""
    return app.Table(name, key_type=str, value_type=bytes, partitions=partitions, help=help)


def _buffer_table(source: str, partitions: int) -> Any:
    return bytes_table(f"buffer-{source}", partitions, f"Arrow chunks of {source} not yet committed to Iceberg.")


buffers = {
    settings.trades_topic: _buffer_table(settings.trades_topic, settings.trades_partitions),
    settings.quotes_topic: _buffer_table(settings.quotes_topic, settings.quotes_partitions),
    settings.reference_topic: _buffer_table(settings.reference_topic, settings.reference_partitions),
}

#: Flush requests (from the timer and from full buffers) to the Iceberg sink agent.
flush_requests = app.channel(value_type=str)


async def send_reject(record: RejectRecord, reject: Reject) -> None:
    """Route a rejected record to the rejects topic: original key and value, reasons in headers."""
    await rejects_topic.send(key=record.key, value=record.value, headers=reject.headers())


metrics = K2Metrics()
runtime = Runtime(
    settings,
    {topic: ChunkStore(table, topic) for topic, table in buffers.items()},
    send_reject,
    metrics,
)
