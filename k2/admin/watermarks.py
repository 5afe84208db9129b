"""Where each source partition's log starts and ends, as a ``read_committed`` reader sees it.

K2 reads committed data only, so a partition's *end* is its **last stable offset** (LSO):
the first offset of the oldest transaction still open, or the high watermark when none
is. Records at or above it may still be aborted; nothing below it changes any more.
What librdkafka answers, checked against Kafka 4.1 (``tests/integration/test_transactions.py``):

* ``AdminClient.list_offsets(OffsetSpec.latest(), isolation_level=READ_COMMITTED)``: the LSO;
  with ``READ_UNCOMMITTED`` (the default of that call) the high watermark.
* ``Consumer.get_watermark_offsets(cached=False)``: the LSO for a consumer configured
  ``isolation.level=read_committed`` (librdkafka's default), the high watermark for
  ``read_uncommitted``; with ``cached=True`` the high watermark whatever the isolation.

One ListOffsets request per kind answers every partition, so :func:`log_ends` makes three.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import IsolationLevel, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.errors import ServiceUnavailable
from k2.lake.records import TopicPartition
from k2.settings import Settings

__all__ = ["FirstRecord", "LogEnds", "end_offsets", "log_ends", "partitions_of"]


class LogEnds(NamedTuple):
    """One partition's log bounds."""

    start: int
    """Log start: the oldest offset retention and ``delete_records`` left."""
    stable: int
    """Last stable offset: the end of what a ``read_committed`` consumer can read (K2's "end")."""
    high: int
    """High watermark: the next offset to be written; above ``stable`` while a transaction is open."""

    @property
    def open(self) -> int:
        """Offsets of transactions still open (between the last stable offset and the high watermark)."""
        return max(0, self.high - self.stable)


class FirstRecord(NamedTuple):
    """The first record a ``read_committed`` reader finds at or after some offset: what has waited longest."""

    offset: int
    timestamp_ms: int | None
    """Its Kafka timestamp (CreateTime unless the topic uses LogAppendTime); None when the record has none."""


def partitions_of(metadata: Any, topics: Iterable[str]) -> dict[str, list[int]]:
    """The partitions of each of ``topics`` the cluster metadata knows (a missing topic is left out)."""
    out: dict[str, list[int]] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is not None and meta.error is None:
            out[topic] = sorted(meta.partitions)
    return out


def log_ends(
    admin: AdminClient, partitions: Sequence[TopicPartition], timeout_s: float
) -> dict[TopicPartition, LogEnds]:
    """Log start, last stable offset and high watermark of ``partitions``: three ListOffsets requests.

    Raises:
        KafkaException: a request failed or timed out (the caller says what it means).
    """
    if not partitions:
        return {}
    asked = {
        "start": (OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED),
        "stable": (OffsetSpec.latest(), IsolationLevel.READ_COMMITTED),
        "high": (OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED),
    }
    found: dict[str, dict[TopicPartition, int]] = {}
    for kind, (spec, isolation) in asked.items():
        futures = admin.list_offsets(
            {KafkaTopicPartition(t, p): spec for t, p in partitions},
            isolation_level=isolation,
            request_timeout=timeout_s,
        )
        try:
            found[kind] = {(tp.topic, tp.partition): f.result(timeout_s + 5).offset for tp, f in futures.items()}
        except TimeoutError as exc:  # librdkafka's own request timeout should have answered first
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no ListOffsets answer in {timeout_s}s")) from exc
    return {tp: LogEnds(found["start"][tp], found["stable"][tp], found["high"][tp]) for tp in partitions}


def end_offsets(settings: Settings, topics: Iterable[str], timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """The end (last stable offset) of every partition of ``topics``; a topic that does not exist is left out.

    Raises:
        ServiceUnavailable: Kafka does not answer within ``timeout_s``, or refuses K2's credentials.
    """
    errors = ConnectErrors()
    admin = AdminClient(client_conf(settings, errors=errors))
    metadata = cluster_metadata(admin, settings, errors, timeout_s)
    partitions = [(t, p) for t, ps in partitions_of(metadata, topics).items() for p in ps]
    try:
        return {tp: ends.stable for tp, ends in log_ends(admin, partitions, timeout_s).items()}
    except KafkaException as exc:
        raise ServiceUnavailable(f"cannot read the end offsets ({exc}): {errors.unavailable(settings, admin)}") from exc
