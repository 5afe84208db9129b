"""Produce a replay folder to Kafka: reference data first, then trades and quotes merged by time.

Records are Avro, Confluent-framed, written by confluent-kafka's ``AvroSerializer`` with
``auto.register.schemas=False``: the replay only ever writes the ids `k2 init` registered,
so a contract that drifted from the registry fails loudly up front instead of silently
registering a new version from a laptop. The producer is idempotent (``acks=all``), so
broker retries never duplicate an event.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from tqdm import tqdm

from k2.admin.clients import LIBRDKAFKA_LOG
from k2.avro.registry import lookup_schema_id
from k2.avro.schemas import CONTRACTS
from k2.errors import NotInitialised, RegistryUnavailable, ReplayInputError
from k2.kafka.security import security_conf
from k2.replay.asx_csv import (
    MalformedLine,
    Quote,
    ReferenceRow,
    Trade,
    data_span_ms,
    parse_quotes_file,
    parse_reference_file,
    parse_trades_file,
)
from k2.replay.feed import (
    Event,
    Faults,
    Injected,
    TokenBucket,
    fan_out,
    merge_by_time,
    replay_plan,
    to_record,
    with_faults,
)
from k2.settings import Settings

__all__ = [
    "ReplayReport",
    "ReplaySource",
    "Replayer",
    "check_kafka",
    "check_registered",
    "load_source",
    "make_producer",
    "make_serializers",
    "producer_config",
]

#: librdkafka's own log lines (connection refused, ...) go here instead of raw to stderr.
KAFKA_LOG = LIBRDKAFKA_LOG

_REFERENCE_FILE = Path("reference-data") / "company_info.csv"
_TICK_FILE = re.compile(r"(\d+)\.csv")
_POLL_EVERY = 1024  # serve delivery callbacks and the progress bar every this many events
_MAX_ERRORS_KEPT = 20


@dataclass
class ReplaySource:
    """A replay folder, parsed: reference rows, time-ordered events, and malformed lines."""

    root: Path
    reference: list[ReferenceRow]
    events: list[Event]  # trades and quotes of all selected symbols, merged by exchange time
    span_ms: int
    malformed: list[MalformedLine]


def _layout_error(root: Path, problem: str) -> ReplayInputError:
    return ReplayInputError(
        f"{root}: {problem}; expected trades/<company_id>.csv, quotes/<company_id>.csv "
        "and reference-data/company_info.csv"
    )


def _tick_files(root: Path, kind: str, known_ids: Collection[int]) -> dict[int, Path]:
    folder = root / kind
    files: dict[int, Path] = {}
    for path in sorted(folder.glob("*.csv")):
        match = _TICK_FILE.fullmatch(path.name)
        if match is None:
            raise _layout_error(root, f"{kind}/{path.name} is not named <company_id>.csv")
        company_id = int(match.group(1))
        if company_id not in known_ids:
            raise ReplayInputError(f"{path}: company_id {company_id} is not in {root / _REFERENCE_FILE}")
        files[company_id] = path
    return files


def load_source(root: Path, symbols: Sequence[str] | None = None, instruments: int = 1) -> ReplaySource:
    """Parse a replay folder, keeping only ``symbols`` (all when None), each as ``instruments`` (see :func:`fan_out`).

    Raises :class:`ReplayInputError` for a missing folder, a missing part of the layout, a
    tick file of a company the reference data does not list, or an unknown symbol.
    Malformed *lines* are not errors: they are collected in the result for reporting.
    """
    if not root.is_dir():
        raise ReplayInputError(f"{root}: no such directory")
    missing = [str(p) for p in (_REFERENCE_FILE, Path("trades"), Path("quotes")) if not (root / p).exists()]
    if missing:
        raise _layout_error(root, f"missing {', '.join(missing)}")
    parsed_reference = parse_reference_file(root / _REFERENCE_FILE)
    malformed = list(parsed_reference.malformed)
    by_id = {row.company_id: row for row in parsed_reference.rows}
    if symbols is None:
        reference = list(by_id.values())
    else:
        by_symbol = {row.symbol: row for row in by_id.values()}
        unknown = sorted(set(symbols) - by_symbol.keys())
        if unknown:
            raise ReplayInputError(
                f"unknown symbol(s) {', '.join(unknown)}: {root / _REFERENCE_FILE} lists {', '.join(sorted(by_symbol))}"
            )
        reference = [by_symbol[s] for s in dict.fromkeys(symbols)]
    chosen = {row.company_id: row for row in reference}
    trades_files = _tick_files(root, "trades", by_id.keys())
    quotes_files = _tick_files(root, "quotes", by_id.keys())
    streams: list[Sequence[Event]] = []
    for company_id, path in trades_files.items():
        if company_id in chosen:
            trades = parse_trades_file(path, symbol=chosen[company_id].symbol, company_id=company_id)
            streams.append(trades.rows)
            malformed.extend(trades.malformed)
    for company_id, path in quotes_files.items():
        if company_id in chosen:
            quotes = parse_quotes_file(path, symbol=chosen[company_id].symbol, company_id=company_id)
            streams.append(quotes.rows)
            malformed.extend(quotes.malformed)
    events, reference = fan_out(list(merge_by_time(streams)), reference, instruments)
    return ReplaySource(
        root=root, reference=reference, events=events, span_ms=data_span_ms(*streams), malformed=malformed
    )


def producer_config(settings: Settings) -> dict[str, Any]:
    """Producer settings for a fast, exactly-once-per-send feed into a local or real cluster.

    Idempotence (implies ``acks=all``) keeps broker-side retries from duplicating events;
    lz4 compression and 50 ms linger with 1 MiB batches trade a little latency for
    throughput; ``murmur2_random`` partitions keys as the Java client (and aiokafka) do, so
    a symbol lands on the same partition whichever client writes it. Deliveries that
    cannot complete fail after ``message.timeout.ms`` rather than hanging the CLI.
    """
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **security_conf(settings),
        "client.id": "k2-replay",
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 50,
        "batch.size": 1 << 20,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 60_000,
        "partitioner": "murmur2_random",
        "logger": KAFKA_LOG,
    }


def make_producer(settings: Settings) -> Producer:
    """An idempotent producer configured by :func:`producer_config`."""
    return Producer(producer_config(settings))


def check_kafka(settings: Settings, timeout_s: float = 10.0) -> None:
    """Fail fast, in about ``timeout_s``, if Kafka is unreachable (saying why) or K2's topics are missing."""
    from k2.admin.topics import admin_client

    metadata = admin_client(settings, timeout_s).list_topics(timeout=timeout_s)
    missing = [t for t in settings.source_topics if t not in metadata.topics]
    if missing:
        raise NotInitialised(f"topic(s) {', '.join(missing)} do not exist: run `k2 init` first")


def check_registered(client: SchemaRegistryClient, settings: Settings) -> dict[str, int]:
    """Subject -> schema id of each contract, as registered by ``k2 init``; raises if any is missing."""
    ids: dict[str, int] = {}
    for contract in CONTRACTS.values():
        subject = contract.subject(settings)
        try:
            schema_id = lookup_schema_id(client, subject, contract.schema_str)
        except RegistryUnavailable as exc:
            raise RegistryUnavailable(
                f"cannot reach the schema registry at {settings.schema_registry_url}: is the stack up? "
                "run `make stack-up`"
            ) from exc
        if schema_id is None:
            raise NotInitialised(f"the {contract.name} contract is not registered under {subject}: run `k2 init` first")
        ids[subject] = schema_id
    return ids


def make_serializers(client: SchemaRegistryClient) -> dict[str, AvroSerializer]:
    """Contract name -> serializer that writes the registered id and never registers a schema."""
    conf = {
        "auto.register.schemas": False,
        "use.latest.version": False,
        "normalize.schemas": False,
        "subject.name.strategy": topic_subject_name_strategy,
    }
    return {name: AvroSerializer(client, c.schema_str, conf=dict(conf)) for name, c in CONTRACTS.items()}


@dataclass
class ReplayReport:
    """What a replay did: deliveries per topic, failures, malformed input lines, time taken."""

    delivered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few delivery errors, verbatim
    malformed: list[MalformedLine] = field(default_factory=list)
    elapsed_s: float = 0.0
    injected: list[Injected] = field(default_factory=list)  # gaps and duplicates put in on purpose

    @property
    def total_delivered(self) -> int:
        """Records the brokers acknowledged, all topics."""
        return sum(self.delivered.values())

    @property
    def total_failed(self) -> int:
        """Records that were not delivered, all topics."""
        return sum(self.failed.values())

    @property
    def rate(self) -> float:
        """Delivered records per second of wall time."""
        return self.total_delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Replayer:
    """Sends a :class:`ReplaySource` through one producer, counting every delivery report."""

    def __init__(
        self,
        producer: Producer,
        serializers: dict[str, AvroSerializer],
        settings: Settings,
        *,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        flush_timeout_s: float = 90.0,
    ) -> None:
        self._producer = producer
        self._serializers = serializers
        self._settings = settings
        self._now_ms = now_ms
        self._flush_timeout_s = flush_timeout_s
        self.report = ReplayReport()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or "?"
        if err is None:
            self.report.delivered[topic] += 1
        else:
            self.report.failed[topic] += 1
            if len(self.report.errors) < _MAX_ERRORS_KEPT:
                self.report.errors.append(f"{topic}: {err.str()}")

    def _produce(self, topic: str, key: bytes, value: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.1)

    def _send_reference(self, rows: Sequence[ReferenceRow]) -> None:
        topic = self._settings.reference_topic
        ctx = SerializationContext(topic, MessageField.VALUE)
        serialize = self._serializers["reference_data"]
        for row in rows:
            self._produce(topic, str(row.company_id).encode(), serialize(row._asdict(), ctx))

    def run(
        self,
        source: ReplaySource,
        *,
        loops: int = 1,
        loop_step_ms: int | None = None,
        rate: float | None = None,
        progress: bool = True,
        faults: Faults | None = None,
    ) -> ReplayReport:
        """Send reference data once, then ``loops`` passes of the events; flush; return the report.

        ``rate`` caps events per second (reference rows included); ``progress`` shows a bar
        on stderr (callers should pass False when stderr is not a terminal); ``loop_step_ms``
        shifts pass *i* by *i* times that instead of past the previous pass; ``faults``
        (:func:`~k2.replay.feed.plan_faults`) drops and repeats events, as listed in the
        report's ``injected``.
        """
        report = self.report
        report.malformed = list(source.malformed)
        bucket = TokenBucket(rate) if rate else None
        total = len(source.reference) + len(source.events) * loops
        planned = replay_plan(source.events, loops, source.span_ms, loop_step_ms)
        if faults is not None:
            total += faults.duplicates - len(faults.drop)
            planned = with_faults(planned, faults, report.injected)
        start = time.perf_counter()
        topics: dict[type, str] = {Trade: self._settings.trades_topic, Quote: self._settings.quotes_topic}
        contexts = {cls: SerializationContext(topic, MessageField.VALUE) for cls, topic in topics.items()}
        serializers = {Trade: self._serializers["trade"], Quote: self._serializers["quote"]}
        keys = {row.symbol: row.symbol.encode() for row in source.reference}
        with tqdm(total=total, unit="ev", unit_scale=True, file=sys.stderr, disable=not progress) as bar:
            if bucket is not None:
                bucket.acquire(len(source.reference))
            self._send_reference(source.reference)
            bar.update(len(source.reference))
            produce, poll, now_ms = self._produce, self._producer.poll, self._now_ms
            pending = 0
            for event, shift, seq_offset in planned:
                if bucket is not None:
                    bucket.acquire()
                cls = type(event)
                ctx = contexts[cls]
                value = serializers[cls](to_record(event, shift, seq_offset, now_ms()), ctx)
                produce(ctx.topic, keys[event.symbol], value)
                pending += 1
                if pending == _POLL_EVERY:
                    poll(0)
                    bar.update(pending)
                    pending = 0
            bar.update(pending)
            remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            report.failed["(not flushed)"] += remaining
            report.errors.append(f"{remaining} record(s) not delivered within {self._flush_timeout_s:.0f} s")
        report.elapsed_s = time.perf_counter() - start
        return report
