"""The shapes the worker buffers between Kafka and Iceberg.

Plain named tuples: cheap to build per event, hashable, and they carry the Kafka
position with the payload, so the exactly-once filter and the lineage columns never
depend on side lists that could drift out of step with the rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

__all__ = ["BufferedEvent", "GapRecord", "RejectRecord", "TopicPartition"]

TopicPartition = tuple[str, int]
"""A Kafka ``(topic, partition)``; the key of every offset map in :mod:`k2.lake.offsets`."""


class BufferedEvent(NamedTuple):
    """A decoded, validated event and its Kafka position.

    ``record`` is the dict fastavro produced from the contract: ``decimal.Decimal`` for
    decimals, epoch-millisecond ``int`` (or aware ``datetime``) for ``timestamp-millis``,
    ``None`` for an absent optional field.
    """

    topic: str
    partition: int
    offset: int
    record: dict[str, Any]


class RejectRecord(NamedTuple):
    """A Kafka record K2 refused, with enough to find and replay the original."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str | None
    rejected_at: int | datetime
    """Epoch milliseconds (or an aware datetime) at which it was rejected."""
    schema_id: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    worker_id: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's own Kafka headers, kept so that ``k2 rejects replay`` can send it again as it came."""


class GapRecord(NamedTuple):
    """A gap in a feed's sequence numbers, found at the event that revealed it (its Kafka position).

    Keyed by that event's position, so a gap found again after a crash (the same event
    re-delivered) is the same row, and the lake's offset marks drop it if it landed.
    """

    topic: str
    partition: int
    offset: int
    exchange: str
    symbol: str
    expected: int
    """The first missing sequence number (the last one seen, plus one)."""
    received: int
    missing: int
    severity: str
    event_time: int | datetime
    """Exchange time of the revealing event: epoch milliseconds or an aware datetime."""
    detected_at: int | datetime
