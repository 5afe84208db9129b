"""What Kafka holds: each source partition's log bounds, and which offsets of a few ranges hold a record.

A short-lived confluent-kafka consumer, assigned partitions by hand (no group join, no
offset commit), every call bounded by a timeout. It reads with the isolation the worker
reads with: Faust's at-least-once consumer is ``read_uncommitted``, so a record of an
aborted transaction reaches the worker and must land; only control markers (and offsets
compaction or retention removed) hold nothing a consumer can see.

Only the candidate holes the lake leaves are read, never the whole log: ranges closer
than ``merge_gap`` offsets are read in one sequential pass (reading a few records in
between is cheaper than a seek and a fetch round trip per hole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.audit.ranges import Ranges, coalesce
from k2.errors import NotInitialised, ServiceUnavailable
from k2.lake.records import TopicPartition
from k2.settings import Settings

__all__ = ["KafkaLog", "LogReader"]

_BATCH = 10_000
_POLL_S = 0.1

log = logging.getLogger(__name__)


class _DebugLog:
    """Where librdkafka's own log lines go: this module's logger, at debug level (``k2 -v`` shows them)."""

    def log(self, level: int, msg: str, *args: object) -> None:
        log.debug(msg, *args)


_QUIET = _DebugLog()


class LogReader(Protocol):
    """What the audit asks of Kafka (a fake in the unit tests)."""

    def bounds(self, topics: Iterable[str]) -> dict[TopicPartition, tuple[int, int]]:
        """Log start (low watermark) and log end (high watermark) of every partition of ``topics``."""
        ...

    def offsets_in(self, topic: str, partition: int, ranges: Ranges) -> pa.Array:
        """Ascending offsets holding a record, read over (at least) ``ranges``."""
        ...


class KafkaLog:
    """:class:`LogReader` over a real cluster; use it as a context manager (it closes its consumer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = 10.0,
        isolation_level: str = "read_uncommitted",
        merge_gap: int = 1000,
    ) -> None:
        self.servers = settings.kafka_bootstrap_servers
        self.timeout_s = timeout_s
        self.merge_gap = merge_gap
        self._settings = settings
        self._errors = ConnectErrors()
        self._consumer = Consumer(
            client_conf(
                settings,
                errors=self._errors,
                **{
                    "group.id": "k2-audit",  # required by librdkafka; never joined, nothing committed
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "isolation.level": isolation_level,
                    # A range that retention deleted meanwhile restarts at the new log start.
                    "auto.offset.reset": "earliest",
                    # librdkafka logs every failed connection attempt (20 a second while the broker is down);
                    # the error the audit raises says it once.
                    "logger": _QUIET,
                },
            )
        )

    def __enter__(self) -> KafkaLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _unavailable(self, what: str, exc: BaseException | str) -> ServiceUnavailable:
        if not self._consumer.assignment():  # nothing to consume: polling serves only the error callbacks
            self._consumer.poll(0)
        if self._errors.refusal() is not None:
            return ServiceUnavailable(f"cannot {what}: {self._errors.explain(self.servers)}")
        return ServiceUnavailable(
            f"cannot {what} from Kafka at {self.servers}: {exc}. Is the broker up (`make stack-up`), "
            "and K2_KAFKA_BOOTSTRAP_SERVERS right?"
        )

    def bounds(self, topics: Iterable[str]) -> dict[TopicPartition, tuple[int, int]]:
        """Log start and end of every partition of ``topics``.

        Raises:
            NotInitialised: a topic does not exist.
            ServiceUnavailable: the cluster does not answer within the timeout.
        """
        try:
            metadata = cluster_metadata(self._consumer, self._settings, self._errors, self.timeout_s)
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(f"cannot read the log bounds: {exc}") from exc
        try:
            out: dict[TopicPartition, tuple[int, int]] = {}
            for topic in topics:
                meta = metadata.topics.get(topic)
                if meta is None or meta.error is not None:
                    raise NotInitialised(
                        f"topic {topic} does not exist on Kafka at {self.servers}: run `k2 init`, "
                        "or point the K2_*_TOPIC settings at K2's topics"
                    )
                for partition in sorted(meta.partitions):
                    low, high = self._consumer.get_watermark_offsets(
                        KafkaTopicPartition(topic, partition), timeout=self.timeout_s, cached=False
                    )
                    out[(topic, partition)] = (low, high)
            return out
        except KafkaException as exc:
            raise self._unavailable("read the log bounds", exc) from exc

    def offsets_in(self, topic: str, partition: int, ranges: Ranges) -> pa.Array:
        """Offsets holding a record in the spans around ``ranges``, ascending.

        Raises:
            ServiceUnavailable: Kafka stops answering for ``timeout_s`` mid-read, or reports an error.
        """
        found: list[pa.Array] = []
        spans = coalesce(ranges, self.merge_gap)
        for start, end in spans:
            found.append(self._read_span(topic, partition, start, end))
        return pa.concat_arrays(found) if found else pa.array([], pa.int64())

    def _read_span(self, topic: str, partition: int, start: int, end: int) -> pa.Array:
        """Offsets of the records in ``[start, end]``: consume from ``start`` until past ``end`` or the log end."""
        try:
            self._consumer.assign([KafkaTopicPartition(topic, partition, start)])
        except KafkaException as exc:
            raise self._unavailable(f"read {topic}/{partition}", exc) from exc
        seen: list[int] = []
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                messages = self._consumer.consume(num_messages=_BATCH, timeout=_POLL_S)
            except KafkaException as exc:
                raise self._unavailable(f"read {topic}/{partition}", exc) from exc
            if not messages:
                if time.monotonic() > deadline:
                    raise self._unavailable(
                        f"read {topic}/{partition} from offset {start}", f"no answer for {self.timeout_s:.0f}s"
                    )
                continue
            deadline = time.monotonic() + self.timeout_s
            # confluent-kafka hands records over one by one: this loop is per record read,
            # and only the few ranges the lake misses are ever read.
            done = False
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise self._unavailable(f"read {topic}/{partition}", error.str())
                offset = message.offset()
                if offset is None:
                    continue
                if offset > end:
                    done = True
                elif offset >= start:
                    seen.append(offset)
            if done:
                self._consumer.unassign()
                return pa.array(seen, pa.int64())
