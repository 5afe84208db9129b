"""The shapes the worker buffers between Kafka and Iceberg.

Plain named tuples: cheap to build per event, hashable, and they carry the Kafka
position with the payload, so the exactly-once filter and the lineage columns never
depend on side lists that could drift out of step with the rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Protocol

__all__ = ["BufferedEvent", "HasPosition", "RejectRecord", "TopicPartition"]

TopicPartition = tuple[str, int]
"""A Kafka ``(topic, partition)``; the key of every offset map in :mod:`k2.lake.offsets`."""


class HasPosition(Protocol):
    """Anything that knows where in Kafka it came from."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


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
