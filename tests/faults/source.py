"""What was produced: the source topics read back from Kafka and decoded with the registry.

Read as K2 must read them, ``read_committed``: a partition ends at its last stable offset,
and a record of an aborted transaction (or a control marker) is no record, so an offset
below the end may hold nothing.

The fault suite judges K2 only from the outside, so it decodes the Confluent wire format
itself (magic byte 0, 4-byte big-endian schema id, Avro body) with fastavro and the
registry's own schemas, instead of K2's codec: a bug shared by K2's decoder and the check
would otherwise pass unnoticed.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

__all__ = [
    "TP",
    "Decoded",
    "Position",
    "Registry",
    "SourceRecord",
    "encode",
    "end_offsets",
    "make_producer",
    "read_topics",
    "reader",
    "trade",
    "with_records",
]

T = TypeVar("T")
TP = tuple[str, int]
Position = tuple[str, int, int]

_HEADER = struct.Struct(">bI")


@dataclass(frozen=True)
class SourceRecord:
    """One Kafka record of a source topic, as the broker holds it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class Decoded:
    """A value that decodes cleanly: a schema id of the topic's subject, a body read to its last byte."""

    schema_id: int
    record: dict[str, Any]


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    """An idempotent producer (per-partition order kept, no duplicates from retries) that takes 1 MB values."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "message.max.bytes": 1_048_588,  # the broker's default limit for one record batch
        "queue.buffering.max.kbytes": 512 * 1024,
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update(extra)
    return Producer(config)


def reader(bootstrap: str, group: str, *, eof: bool = False) -> Consumer:
    """A ``read_committed`` consumer for reading partitions back by assignment (it joins no group and commits
    nothing), in large fetches; ``eof``: it reports the end of each partition (``KafkaError._PARTITION_EOF``)."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": eof,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )


def end_offsets(bootstrap: str, topics: Iterable[str], timeout_s: float = 15.0) -> dict[TP, int]:
    """The end of every partition of ``topics`` for a ``read_committed`` reader (the last stable offset: the high
    watermark unless a transaction is open); a topic that does not exist is absent."""
    consumer = reader(bootstrap, "k2-faults-watermarks")
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        out: dict[TP, int] = {}
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for partition in meta.partitions:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                out[(topic, partition)] = high
        return out
    finally:
        consumer.close()


def read_topics(bootstrap: str, ends: Mapping[TP, int], timeout_s: float = 300.0) -> dict[Position, SourceRecord]:
    """Every committed record below ``ends`` (topic, partition -> end offset), read from offset 0 of each partition.
    A partition is done at its end offset or at the end of its log, whichever comes first: the last offsets below
    the end may be markers or aborted records, which no reader gets.

    Raises ``TimeoutError`` naming the partitions that did not deliver everything in ``timeout_s``.
    """
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    out: dict[Position, SourceRecord] = {}
    if not wanted:
        return out
    consumer = reader(bootstrap, "k2-faults-readback", eof=True)
    try:
        consumer.assign([TopicPartition(t, p, 0) for (t, p) in wanted])
        remaining = dict(wanted)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                tp = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    remaining.pop(tp, None)  # the end of the log: the rest below the end holds no record
                    continue
                offset = msg.offset()
                if tp not in remaining or offset >= wanted[tp]:
                    remaining.pop(tp, None)
                    continue
                out[(tp[0], tp[1], offset)] = SourceRecord(tp[0], tp[1], offset, msg.key(), msg.value())
                if offset + 1 >= wanted[tp]:
                    remaining.pop(tp, None)
        if remaining:
            raise TimeoutError(f"reading the source topics back took over {timeout_s}s; still missing {remaining}")
        return out
    finally:
        consumer.close()


def with_records(bootstrap: str, starts: Mapping[TP, int], ends: Mapping[TP, int], timeout_s: float = 60.0) -> set[TP]:
    """The partitions holding a committed record in ``[starts[tp], ends[tp])``: where something waits to land."""
    consumer = reader(bootstrap, "k2-faults-waiting", eof=True)
    wanted = {tp: start for tp, start in starts.items() if start < ends.get(tp, 0)}
    found: set[TP] = set()
    try:
        if not wanted:
            return found
        consumer.assign([TopicPartition(t, p, start) for (t, p), start in wanted.items()])
        left = set(wanted)
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                tp = (msg.topic(), msg.partition())
                if tp not in left:
                    continue
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if error is None and msg.offset() < ends[tp]:
                    found.add(tp)
                left.discard(tp)
                consumer.pause([TopicPartition(*tp)])
        if left:
            raise TimeoutError(f"no answer about {sorted(left)} within {timeout_s}s")
        return found
    finally:
        consumer.close()


def _asked(call: Callable[[], T], attempts: int = 5) -> T:
    """``call()`` to the registry, asked again after a failure that is not an answer (a timeout, a refused
    connection, a 5xx) with a growing pause: a loaded machine's slow registry is not a verdict on the frames.
    The registry's own answers (a 404: no such subject or id) are raised at once."""
    for attempt in range(attempts):
        try:
            return call()
        except SchemaRegistryError as exc:
            if (exc.http_status_code is not None and 0 < exc.http_status_code < 500) or attempt == attempts - 1:
                raise
        except Exception:
            if attempt == attempts - 1:
                raise
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


class Registry:
    """The schema registry as the suite sees it: schemas by id, ids by subject, cached."""

    def __init__(self, url: str) -> None:
        self.client = SchemaRegistryClient({"url": url, "timeout": 30})
        self._schemas: dict[int, Any] = {}
        self._subject_ids: dict[str, set[int]] = {}

    def subject_ids(self, subject: str) -> set[int]:
        """Every schema id registered under ``subject`` (empty when the subject does not exist)."""
        if subject not in self._subject_ids:
            try:
                versions = _asked(lambda: self.client.get_versions(subject))
                ids = {_asked(lambda v=v: self.client.get_version(subject, v)).schema_id for v in versions}
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise
                ids = set()  # an unknown subject
            self._subject_ids[subject] = ids
        return self._subject_ids[subject]

    def latest(self, subject: str) -> tuple[int, Any]:
        """(id, parsed schema) of the subject's latest version."""
        registered = self.client.get_latest_version(subject)
        return registered.schema_id, self.parsed(registered.schema_id)

    def parsed(self, schema_id: int) -> Any:
        """The fastavro-parsed schema of ``schema_id``, or None when the registry does not know it."""
        if schema_id not in self._schemas:
            parsed = None
            if 0 <= schema_id < 2**31:
                try:
                    text = _asked(lambda: self.client.get_schema(schema_id)).schema_str
                    parsed = fastavro.parse_schema(json.loads(text))
                except SchemaRegistryError as exc:
                    if exc.http_status_code != 404:
                        raise
                    parsed = None  # an unknown id: the frame is not decodable
            self._schemas[schema_id] = parsed
        return self._schemas[schema_id]

    def forget_subjects(self) -> None:
        """Drop the id-by-subject cache (after a new version was registered)."""
        self._subject_ids.clear()

    def decode(self, value: bytes | None, subject: str) -> Decoded | None:
        """The record in ``value`` if it is a clean frame of ``subject``; None for anything else."""
        if value is None or len(value) < _HEADER.size:
            return None
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != 0 or schema_id not in self.subject_ids(subject):
            return None
        schema = self.parsed(schema_id)
        if schema is None:
            return None
        body = io.BytesIO(value[_HEADER.size :])
        try:
            record = fastavro.schemaless_reader(body, schema, None)
        except (AttributeError, NameError):  # the suite's own bug, never a verdict on the frame
            raise
        except Exception:  # truncated or garbled body
            return None
        if body.tell() != len(value) - _HEADER.size or not isinstance(record, dict):
            return None  # trailing bytes: not a clean frame
        return Decoded(schema_id, record)


def encode(schema_id: int, schema: Any, record: Mapping[str, Any]) -> bytes:
    """A Confluent frame of ``record`` (the suite's own encoder, for frames the replay cannot make)."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, dict(record))
    return _HEADER.pack(0, schema_id) + body.getvalue()


NOW_MS = 1_394_406_000_000  # 2014-03-09T23:00:00Z


def trade(symbol: str, sequence_number: int, **extra: Any) -> dict[str, Any]:
    """A valid trade record for the registered trade contract (plus any fields a newer version has)."""
    return {
        "symbol": symbol, "company_id": 7078, "exchange": "ASX", "exchange_timestamp": NOW_MS + sequence_number,
        "price": Decimal("36.667000"), "volume": 100 + sequence_number, "qualifiers": 0, "venue": "",
        "buyer_id": None, "ingestion_timestamp": NOW_MS, "sequence_number": sequence_number, **extra,
    }  # fmt: skip
