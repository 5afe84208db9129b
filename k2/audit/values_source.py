"""Where the value audit reads the source: Kafka's records, with the worker's isolation, and their writer schemas.

:class:`SourceLog` is a short-lived confluent-kafka consumer assigned partitions by hand (no
group join, nothing committed) that hands over every record of an offset span, key, value
and headers untouched. It reads ``read_committed``, as the worker does: a record of an
aborted transaction is nothing the worker may land. Spans read one after the other in a
partition continue the same fetch instead of seeking again, so a full audit reads each
partition in one sequential pass. Every wait is bounded by ``timeout_s``.

:class:`WriterPlans` resolves schema ids as the worker does (the id registered under the
topic's subject, by :func:`~k2.avro.registry.fetch_schema_text`) and keeps the answer for the
run, a refusal included: the registry is asked once per id and topic.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from confluent_kafka import IsolationLevel, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata, log_reader
from k2.audit.values_decode import WriterPlan
from k2.avro.registry import fetch_schema_text, registry_client
from k2.avro.schemas import subject_for_topic
from k2.errors import DecodeError, NotInitialised, ServiceUnavailable
from k2.settings import Settings

__all__ = ["ISOLATION", "SourceLog", "SourceRecords", "WriterPlans"]

ISOLATION = "read_committed"
"""The worker's isolation: what it may land is what a ``read_committed`` consumer sees."""

_ISOLATION_LEVELS = {
    "read_committed": IsolationLevel.READ_COMMITTED,
    "read_uncommitted": IsolationLevel.READ_UNCOMMITTED,
}
_BATCH = 10_000
_POLL_S = 0.2
_SKIP = 20_000
"""Read on through at most this many offsets rather than seek (a seek restarts the fetch)."""


@dataclass(frozen=True)
class SourceRecords:
    """The records of one offset span of one partition, in offset order."""

    offsets: np.ndarray
    keys: list[bytes | None]
    values: list[bytes | None]
    headers: Sequence[list[tuple[str, bytes | None]] | None]

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class _Position:
    """Where the consumer stands: its partition, the next offset it will hand over, and what it read past a span."""

    topic: str
    partition: int
    next_offset: int
    ahead: list[Message] = field(default_factory=list)
    ahead_offsets: list[int] = field(default_factory=list)


class SourceLog:
    """Kafka's records, span by span; use it as a context manager (it closes its consumer)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0, isolation_level: str = ISOLATION) -> None:
        self.servers = settings.kafka_bootstrap_servers
        self.timeout_s = timeout_s
        self._settings = settings
        self._errors = ConnectErrors()
        self._consumer = log_reader(
            settings,
            group="k2-audit-values",
            isolation=isolation_level,
            errors=self._errors,
            # librdkafka prefetches up to 64 MiB a partition by default: a few buckets' worth is enough.
            **{
                "queued.max.messages.kbytes": 16 * 1024,
                "fetch.max.bytes": 8 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                # At a partition's end the broker holds a fetch this long before saying so (default 500).
                "fetch.wait.max.ms": 50,
            },
        )
        self._admin = AdminClient(client_conf(settings, errors=self._errors))
        self._isolation = _ISOLATION_LEVELS[isolation_level]
        self._at: _Position | None = None
        self.records_read = 0

    def __enter__(self) -> SourceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _unavailable(self, what: str, exc: BaseException | str) -> ServiceUnavailable:
        if not self._consumer.assignment():
            self._consumer.poll(0)
        if self._errors.refusal() is not None:
            return ServiceUnavailable(f"cannot {what}: {self._errors.explain(self.servers)}")
        return ServiceUnavailable(
            f"cannot {what} from Kafka at {self.servers}: {exc}. Is the broker up (`make stack-up`), "
            "and K2_KAFKA_BOOTSTRAP_SERVERS right?"
        )

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """Log start and log end (for ``read_committed``, the last stable offset) of every partition of ``topic``.

        Raises:
            NotInitialised: the topic does not exist.
            ServiceUnavailable: the cluster does not answer within the timeout.
        """
        metadata = cluster_metadata(self._consumer, self._settings, self._errors, self.timeout_s)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise NotInitialised(f"topic {topic} does not exist on Kafka at {self.servers}: run `k2 init`")
        partitions = [KafkaTopicPartition(topic, p) for p in sorted(meta.partitions)]
        low = self._list_offsets(partitions, OffsetSpec.earliest())
        high = self._list_offsets(partitions, OffsetSpec.latest())
        return {p.partition: (low[p.partition], high[p.partition]) for p in partitions}

    def _list_offsets(self, partitions: list[KafkaTopicPartition], spec: OffsetSpec) -> dict[int, int]:
        """One ListOffsets request for every partition (a watermark query per partition costs a round trip each)."""
        try:
            futures = self._admin.list_offsets(
                {tp: spec for tp in partitions}, isolation_level=self._isolation, request_timeout=self.timeout_s
            )
            return {tp.partition: future.result(timeout=self.timeout_s).offset for tp, future in futures.items()}
        except (KafkaException, FutureTimeout) as exc:
            raise self._unavailable(f"read the log bounds of {partitions[0].topic}", exc) from exc

    def read(self, topic: str, partition: int, first: int, last: int) -> SourceRecords:
        """Every record Kafka holds at offsets ``first`` to ``last``, stopping early at the log's end.

        Raises:
            ServiceUnavailable: Kafka stops answering for ``timeout_s``, or reports an error.
        """
        at = self._position(topic, partition, first)
        messages: list[Message] = []
        offsets: list[int] = []
        queue, queued = at.ahead, at.ahead_offsets
        end = False
        deadline = time.monotonic() + self.timeout_s
        while True:
            low, high = bisect.bisect_left(queued, first), bisect.bisect_right(queued, last)
            messages += queue[low:high]
            offsets += queued[low:high]
            if high < len(queued) or (high and queued[high - 1] == last) or end:  # offsets ascend: all in hand
                at.ahead, at.ahead_offsets = queue[high:], queued[high:]
                return self._records(messages, offsets)
            try:
                batch = self._consumer.consume(num_messages=_BATCH, timeout=_POLL_S)
            except KafkaException as exc:
                raise self._unavailable(f"read {topic}/{partition}", exc) from exc
            if not batch:
                if time.monotonic() > deadline:
                    raise self._unavailable(
                        f"read {topic}/{partition} from offset {first}", f"no answer for {self.timeout_s:.0f}s"
                    )
                queue, queued = [], []
                continue
            deadline = time.monotonic() + self.timeout_s
            queue = []
            for message in batch:
                error = message.error()
                if error is None:
                    queue.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    end = True
                else:
                    raise self._unavailable(f"read {topic}/{partition}", error.str())
            queued = [_offset(m) for m in queue]
            if queued:
                at.next_offset = queued[-1] + 1

    def _position(self, topic: str, partition: int, first: int) -> _Position:
        """The consumer's position if reading on from it reaches ``first`` soon, else a new one at ``first``."""
        at = self._at
        if at is not None and (at.topic, at.partition) == (topic, partition):
            position = at.ahead_offsets[0] if at.ahead_offsets else at.next_offset
            if position <= first <= at.next_offset + _SKIP:
                return at
        try:
            self._consumer.assign([KafkaTopicPartition(topic, partition, first)])
        except KafkaException as exc:
            raise self._unavailable(f"read {topic}/{partition}", exc) from exc
        self._at = _Position(topic, partition, first)
        return self._at

    def _records(self, messages: list[Message], offsets: list[int]) -> SourceRecords:
        self.records_read += len(messages)
        return SourceRecords(
            np.array(offsets, dtype=np.int64),
            [m.key() for m in messages],
            [m.value() for m in messages],
            _Headers(messages),
        )


class _Headers(Sequence[list[tuple[str, bytes | None]] | None]):
    """The records' headers, read from a message only when asked (only rejects keep them)."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, i: int) -> list[tuple[str, bytes | None]] | None: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[tuple[str, bytes | None]] | None]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [m.headers() for m in self._messages[i]]
        return self._messages[i].headers()


def _offset(message: Message) -> int:
    offset = message.offset()
    if offset is None:  # only error events carry none, and those never get here
        raise ValueError("a record without an offset")
    return offset


class WriterPlans:
    """Schema id -> :class:`~k2.audit.values_decode.WriterPlan` (or why K2 rejects its records), per topic, cached."""

    def __init__(self, fetch: Callable[[int, str], str]) -> None:
        """``fetch(schema_id, subject)``: the schema's text, raising K2's decode errors as the registry answers."""
        self._fetch = fetch
        self._plans: dict[tuple[int, str], WriterPlan | str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> WriterPlans:
        """Plans from the configured registry."""
        client = registry_client(settings)
        return cls(lambda schema_id, subject: fetch_schema_text(client, schema_id, subject))

    def resolver(self, topic: str) -> Callable[[int], WriterPlan | str]:
        """What :func:`~k2.audit.values_decode.decode_block` asks: the plan of an id read from ``topic``.

        Raises (from the returned callable):
            RegistryUnavailable: the registry cannot answer (the audit cannot check: exit 2).
        """
        subject = subject_for_topic(topic)

        def resolve(schema_id: int) -> WriterPlan | str:
            key = (schema_id, subject)
            if key not in self._plans:
                try:
                    self._plans[key] = WriterPlan.of(schema_id, self._fetch(schema_id, subject))
                except DecodeError as exc:  # unknown id, wrong subject, not Avro: K2 rejects its records
                    self._plans[key] = f"{exc.reason}: {exc}"
                except ValueError as exc:
                    self._plans[key] = f"undecodable: {exc}"
            return self._plans[key]

        return resolve

    def plans(self) -> list[WriterPlan]:
        """Every plan resolved so far."""
        return [p for p in self._plans.values() if isinstance(p, WriterPlan)]
