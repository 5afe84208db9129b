"""What Kafka holds: each source partition's log bounds, and which offsets of a few ranges hold a record.

A short-lived confluent-kafka consumer, assigned partitions by hand (no group join, no
offset commit), every call bounded by a timeout. It reads ``read_committed``, as K2's
law is stated: a record of an aborted transaction is no record, and a control marker
(like an offset compaction or retention removed) holds nothing a consumer can see. The
log bounds come from an AdminClient (:func:`k2.admin.watermarks.log_ends`): the end is
the last stable offset, and the high watermark says whether a transaction is open.

Only the candidate holes the lake leaves are read, never the whole log: ranges closer
than ``merge_gap`` offsets are read in one sequential pass (reading a few records in
between is cheaper than a seek and a fetch round trip per hole). The whole judged window
of a partition is read only where a hole turned out to hold no record: that partition has
transactions (or compaction) in it, and only a full read tells its aborted records apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import pyarrow as pa
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata, log_reader
from k2.admin.watermarks import FirstRecord, LogEnds, log_ends, partitions_of
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

    def bounds(self, topics: Iterable[str]) -> dict[TopicPartition, LogEnds]:
        """Log start, last stable offset and high watermark of every partition of ``topics``."""
        ...

    def offsets_in(self, topic: str, partition: int, ranges: Ranges, *, committed: bool = True) -> pa.Array:
        """Ascending offsets holding a record (for a ``read_uncommitted`` reader if not ``committed``), read over
        (at least) ``ranges``."""
        ...

    def first_records(
        self, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, FirstRecord | None]:
        """Per partition, the first committed record at or after its start and below its end (None: there is none)."""
        ...

    def compacted(self, topics: Iterable[str]) -> set[str]:
        """Which of ``topics`` are compacted (a record may be gone from them after it landed)."""
        ...


class KafkaLog:
    """:class:`LogReader` over a real cluster; use it as a context manager (it closes its consumers)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0, merge_gap: int = 1000) -> None:
        self.servers = settings.kafka_bootstrap_servers
        self.timeout_s = timeout_s
        self.merge_gap = merge_gap
        self._settings = settings
        self._errors = ConnectErrors()
        self._admin = AdminClient(client_conf(settings, errors=self._errors, logger=_QUIET))
        self._consumers: dict[str, Consumer] = {}

    def __enter__(self) -> KafkaLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()

    def _consumer(self, isolation: str = "read_committed") -> Consumer:
        """The reader of one isolation level, made on first use."""
        if isolation not in self._consumers:
            # librdkafka logs every failed connection attempt (20 a second while the broker is down);
            # the error the audit raises says it once.
            self._consumers[isolation] = log_reader(
                self._settings, group="k2-audit", isolation=isolation, errors=self._errors, logger=_QUIET
            )
        return self._consumers[isolation]

    def _unavailable(self, what: str, exc: BaseException | str) -> ServiceUnavailable:
        self._admin.poll(0)  # serve the error callbacks
        if self._errors.refusal() is not None:
            return ServiceUnavailable(f"cannot {what}: {self._errors.explain(self.servers)}")
        return ServiceUnavailable(
            f"cannot {what} from Kafka at {self.servers}: {exc}. Is the broker up (`make stack-up`), "
            "and K2_KAFKA_BOOTSTRAP_SERVERS right?"
        )

    def bounds(self, topics: Iterable[str]) -> dict[TopicPartition, LogEnds]:
        """Log start, last stable offset and high watermark of every partition of ``topics``.

        Raises:
            NotInitialised: a topic does not exist.
            ServiceUnavailable: the cluster does not answer within the timeout.
        """
        topics = list(topics)
        try:
            metadata = cluster_metadata(self._admin, self._settings, self._errors, self.timeout_s)
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(f"cannot read the log bounds: {exc}") from exc
        found = partitions_of(metadata, topics)
        for topic in topics:
            if topic not in found:
                raise NotInitialised(
                    f"topic {topic} does not exist on Kafka at {self.servers}: run `k2 init`, "
                    "or point the K2_*_TOPIC settings at K2's topics"
                )
        try:
            return log_ends(self._admin, [(t, p) for t in topics for p in found[t]], self.timeout_s)
        except KafkaException as exc:
            raise self._unavailable("read the log bounds", exc) from exc

    def compacted(self, topics: Iterable[str]) -> set[str]:
        """Which of ``topics`` have ``compact`` in their ``cleanup.policy``.

        Raises:
            ServiceUnavailable: the cluster does not answer within the timeout.
        """
        resources = {topic: ConfigResource(ResourceType.TOPIC, topic) for topic in topics}
        if not resources:
            return set()
        try:
            found = self._admin.describe_configs(list(resources.values()), request_timeout=self.timeout_s)
            policies = {
                topic: found[res].result(self.timeout_s + 5).get("cleanup.policy") for topic, res in resources.items()
            }
        except (KafkaException, TimeoutError) as exc:
            raise self._unavailable("read the topics' cleanup policy", exc) from exc
        return {topic for topic, entry in policies.items() if entry is not None and "compact" in str(entry.value)}

    def offsets_in(self, topic: str, partition: int, ranges: Ranges, *, committed: bool = True) -> pa.Array:
        """Offsets holding a record in the spans around ``ranges``, ascending.

        Args:
            committed: read as a ``read_committed`` consumer (records of aborted and open
                transactions are not records); False: as a ``read_uncommitted`` one.

        Raises:
            ServiceUnavailable: Kafka stops answering for ``timeout_s`` mid-read, or reports an error.
        """
        consumer = self._consumer("read_committed" if committed else "read_uncommitted")
        found: list[pa.Array] = []
        spans = coalesce(ranges, self.merge_gap)
        for start, end in spans:
            found.append(self._read_span(consumer, topic, partition, start, end))
        return pa.concat_arrays(found) if found else pa.array([], pa.int64())

    def _read_span(self, consumer: Consumer, topic: str, partition: int, start: int, end: int) -> pa.Array:
        """Offsets of the records in ``[start, end]``: consume from ``start`` until past ``end`` or the log end."""
        seen: list[int] = []
        where = f"{topic}/{partition}"
        for message in self._messages(consumer, {(topic, partition): start}, f"read {where} from offset {start}"):
            if message is None:  # the end of the log
                break
            offset = message.offset()
            if offset is None:
                continue
            if offset > end:
                break
            if offset >= start:
                seen.append(offset)
        return pa.array(seen, pa.int64())

    def first_records(
        self, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, FirstRecord | None]:
        """Per partition, the first committed record at or after ``starts[tp]`` and below ``ends[tp]``.

        One pass over every partition asked (those with nothing below their end are not read):
        the read of a partition stops at its first record, or at the end of its log. Control
        markers and aborted records are skipped, so a partition whose only offsets above the
        start are markers has no first record: nothing waits there.

        Raises:
            ServiceUnavailable: Kafka stops answering for ``timeout_s`` mid-read, or reports an error.
        """
        out: dict[TopicPartition, FirstRecord | None] = {tp: None for tp in starts}
        wanted = {tp: start for tp, start in starts.items() if start < ends.get(tp, 0)}
        if not wanted:
            return out
        left = set(wanted)
        consumer = self._consumer()
        for message in self._messages(consumer, wanted, f"read {len(wanted)} partition(s)", left=left):
            if message is None:
                continue
            tp = (str(message.topic()), int(message.partition() or 0))
            offset = message.offset()
            if tp not in left or offset is None or offset < wanted[tp]:
                continue
            left.discard(tp)
            consumer.pause([KafkaTopicPartition(*tp)])  # a long backlog behind it is not read
            if offset < ends[tp]:
                kind, ms = message.timestamp()
                out[tp] = FirstRecord(offset, None if kind == TIMESTAMP_NOT_AVAILABLE else ms)
        return out

    def _messages(
        self,
        consumer: Consumer,
        starts: Mapping[TopicPartition, int],
        what: str,
        *,
        left: set[TopicPartition] | None = None,
    ) -> Iterator[Message | None]:
        """The records of ``starts``' partitions from their start offsets, and None at each partition's log end.

        Stops when the caller stops iterating, or once every partition of ``left`` (when given) was
        removed from it by the caller or reached its end; the partitions are unassigned either way.

        Raises:
            ServiceUnavailable: no answer for ``timeout_s``, or an error from Kafka.
        """
        try:
            consumer.assign([KafkaTopicPartition(t, p, o) for (t, p), o in starts.items()])
        except KafkaException as exc:
            raise self._unavailable(what, exc) from exc
        deadline = time.monotonic() + self.timeout_s
        try:
            while left is None or left:
                try:
                    messages = consumer.consume(num_messages=_BATCH, timeout=_POLL_S)
                except KafkaException as exc:
                    raise self._unavailable(what, exc) from exc
                if not messages:
                    if time.monotonic() > deadline:
                        raise self._unavailable(what, f"no answer for {self.timeout_s:.0f}s")
                    continue
                deadline = time.monotonic() + self.timeout_s
                # confluent-kafka hands records over one by one: this loop is per record read,
                # and only the few ranges the lake misses are ever read.
                for message in messages:
                    error = message.error()
                    if error is None:
                        yield message
                    elif error.code() == KafkaError._PARTITION_EOF:
                        if left is not None:
                            left.discard((str(message.topic()), int(message.partition() or 0)))
                        yield None
                    else:
                        raise self._unavailable(what, error.str())
        finally:
            assigned = consumer.assignment()
            if assigned:
                consumer.resume(assigned)  # a partition paused here must not stay paused for the next read
            consumer.unassign()
