"""K2's consumer over faust's: batch delivery and sink-owned commits, and the private names they rely on.

The pins fail loudly when a faust or aiokafka upgrade renames or reshapes what
:mod:`k2.kafka.consumer` overrides or reaches into; the behaviour tests drive faust's own
commit path through K2's overrides with the real app object (no broker needed).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import Assignment, SubscriptionState, TopicPartitionState
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from prometheus_client import CollectorRegistry

from k2.app import create_app
from k2.kafka.batches import BATCH_SCHEMA, FetchedBatch, TopicFetch, fetch_message
from k2.kafka.consumer import K2Consumer, K2ConsumerThread, PositionedRecords, positions_of
from k2.settings import Settings


def params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_faust_private_methods_k2_overrides_are_still_there() -> None:
    base = faust_consumer.Consumer
    assert params(base._new_offset) == ["self", "tp"]
    assert params(base._filter_tps_with_pending_acks) == ["self", "topics"]
    assert params(base.getmany) == ["self", "timeout"]
    assert params(base.perform_seek) == ["self"]
    assert params(base.on_partitions_revoked) == ["self", "revoked"]
    assert params(faust_aiokafka.AIOKafkaConsumerThread._fetch_records) == [
        "self",
        "consumer",
        "active_partitions",
        "timeout",
        "max_records",
    ]
    # faust's commit path still asks these two for what to commit.
    source = inspect.getsource(base.force_commit) + inspect.getsource(base._filter_committable_offsets)
    assert "_filter_tps_with_pending_acks" in source and "_new_offset" in source
    # ...and K2's getmany mirrors faust's: when faust's changes, K2's must be re-read.
    assert "_wait_next_records" in inspect.getsource(base.getmany)
    assert "perform_seek" in inspect.getsource(base.getmany)
    assert faust.__version__.startswith("0.15."), "re-check k2.kafka.consumer against this faust version"


def test_aiokafka_fetcher_internals_k2_reads_are_still_there() -> None:
    assert params(Fetcher.fetched_records) == ["self", "partitions", "timeout", "max_records"]
    assert callable(Fetcher._create_fetch_waiter)
    assert isinstance(SubscriptionState.reassignment_in_progress, property)
    assert hasattr(SubscriptionState, "fetch_context")
    assert isinstance(SubscriptionState.subscription, property)
    assert callable(Assignment.state_value)
    assert isinstance(TopicPartitionState.position, property)
    assert isinstance(TopicPartitionState.has_valid_position, property)
    assert aiokafka.__version__.startswith("0.14."), "re-check k2.kafka.consumer against this aiokafka version"


@dataclass
class FakeState:
    position: int
    has_valid_position: bool = True


class FakeAssignment:
    def __init__(self, positions: Mapping[TP, int | None]) -> None:
        self.positions = dict(positions)

    def state_value(self, tp: Any) -> FakeState:
        pos = self.positions[TP(tp.topic, tp.partition)]
        return FakeState(pos or 0, pos is not None)


class FakeSubscriptions:
    def __init__(self, positions: Mapping[TP, int | None]) -> None:
        self.subscription = self
        self.assignment = FakeAssignment(positions)


def test_positions_of_skips_partitions_without_a_valid_position() -> None:
    a, b, c = TP("t", 0), TP("t", 1), TP("t", 2)
    subs = FakeSubscriptions({a: 5, b: None})
    assert positions_of(subs, [a, b, c]) == {a: 5}


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = b"v"
    timestamp: int = 1_000
    timestamp_type: int = 0
    serialized_value_size: int = 1


def test_a_fetch_travels_as_one_faust_message_at_its_first_batchs_last_offset() -> None:
    first = FetchedBatch(TP("t", 3), 10, 14, [Rec("t", 3, 10), Rec("t", 3, 13)], generation=4)
    fetch = TopicFetch((first, FetchedBatch(TP("t", 5), 7, 8, [Rec("t", 5, 7)], generation=4)))
    msg = fetch_message(fetch)
    assert (msg.topic, msg.partition, msg.offset, msg.generation_id) == ("t", 3, 13, 4)
    assert msg.value is fetch and msg.key is None and len(fetch) == 3
    assert BATCH_SCHEMA.loads_value(None, msg) is fetch  # type: ignore[arg-type]
    assert BATCH_SCHEMA.loads_key(None, msg) is None  # type: ignore[arg-type]


def test_a_fetch_holds_one_topics_partitions_in_ascending_order() -> None:
    a, b = FetchedBatch(TP("t", 1), 0, 1, [], 4), FetchedBatch(TP("t", 2), 0, 1, [], 4)
    for wrong in ((), (b, a), (a, a), (a, FetchedBatch(TP("u", 3), 0, 1, [], 4))):
        with pytest.raises(ValueError):
            TopicFetch(wrong)


async def test_a_fetch_reaches_each_topics_agent_as_one_message(
    consumer: K2Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: a live fetch holds tens of records per partition; the pipeline takes a topic's at once."""
    sink = Sink({})
    sink.batch_topics = frozenset({"src", "quotes"})  # type: ignore[misc]
    monkeypatch.setattr(type(consumer.app), "batch_sink", property(lambda self: sink))
    records = PositionedRecords()
    records[TP("src", 2)] = [Rec("src", 2, 40), Rec("src", 2, 41)]
    records[TP("quotes", 0)] = [Rec("quotes", 0, 9)]
    records[TP("src", 0)] = [Rec("src", 0, 7)]
    records[TP("src", 1)] = []  # the fetcher moved past a transaction marker
    records.positions = {TP("src", 2): (40, 42), TP("src", 1): (3, 5), TP("quotes", 0): (9, 10)}

    async def wait_next_records(timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109
        return records, None

    monkeypatch.setattr(consumer, "_wait_next_records", wait_next_records)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 100)
    out = [(tp, msg) async for tp, msg in consumer.getmany(1.0)]
    assert [(tp, msg.offset) for tp, msg in out] == [(TP("src", 0), 7), (TP("quotes", 0), 9)]
    src = out[0][1].value
    assert isinstance(src, TopicFetch)
    assert [(b.partition, b.start, b.end, [r.offset for r in b.records]) for b in src.batches] == [
        (0, 7, 8, [7]),  # no position recorded: from its records
        (1, 3, 5, []),
        (2, 40, 42, [40, 41]),
    ]


class Sink:
    """A BatchSink recording what the consumer asks."""

    batch_topics = frozenset({"src"})

    def __init__(self, offsets: Mapping[TP, int | None]) -> None:
        self.offsets = dict(offsets)
        self.revoked: list[set[TP]] = []
        self.sought: list[dict[TP, int | None]] = []

    def commit_offset(self, tp: TP) -> int | None:
        return self.offsets.get(tp)

    def committable(self) -> Iterable[TP]:
        return list(self.offsets)

    async def on_revoke(self, tps: set[TP]) -> None:
        self.revoked.append(tps)

    def on_assign(self, tps: set[TP], generation: int) -> None: ...

    async def on_seek(self, positions: Mapping[TP, int | None], generation: int) -> None:
        self.sought.append(dict(positions))


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> K2Consumer:
    app = create_app(Settings(trades_topic="src"), CollectorRegistry())
    cons = app.consumer
    assert isinstance(cons, K2Consumer)
    assert isinstance(cons._new_consumer_thread(), K2ConsumerThread)
    return cons


async def test_faust_commits_what_the_sink_says_for_batch_topics(
    consumer: K2Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink({TP("src", 0): 120, TP("src", 1): None})
    monkeypatch.setattr(type(consumer.app), "batch_sink", property(lambda self: sink))
    committed: list[dict[TP, int]] = []

    async def commit_offsets(offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        committed.append(dict(offsets))
        consumer._committed_offset.update(offsets)
        return True

    monkeypatch.setattr(consumer, "_commit_offsets", commit_offsets)
    monkeypatch.setattr(consumer, "_handle_attached", _nothing)
    assert await consumer.force_commit()
    assert committed == [{TP("src", 0): 120}]
    # Nothing new: faust does not commit the same offset again.
    assert not await consumer.force_commit()
    sink.offsets[TP("src", 0)] = 130
    assert await consumer.force_commit()
    assert committed[-1] == {TP("src", 0): 130}


async def _nothing(*_: Any, **__: Any) -> None:
    return None


def test_source_topics_keep_no_faust_ack_state(consumer: K2Consumer) -> None:
    """faust acks and skips events on its own (crashed agents, rebalances): for K2's sources it must keep none."""
    for name in ("k2.ingest.trades", "k2.ingest.quotes", "k2.ingest.reference"):
        channel = consumer.app.agents[name].channel
        assert channel.acks is False and channel.schema is BATCH_SCHEMA


async def test_positioned_records_carry_positions() -> None:
    out = PositionedRecords()
    out[TP("t", 0)] = []
    out.positions[TP("t", 0)] = (1, 2)
    assert dict(out) == {TP("t", 0): []} and out.positions == {TP("t", 0): (1, 2)}


def test_an_empty_batch_travels_at_the_offset_before_its_end() -> None:
    msg = fetch_message(TopicFetch((FetchedBatch(TP("t", 3), 525, 527, [], generation=4),)))
    assert (msg.offset, msg.generation_id) == (526, 4) and msg.value.batches[0].records == []  # type: ignore[union-attr]


class MovingFetcher:
    """A fetcher whose drain moves the position past a transaction marker and returns no record."""

    def __init__(self, subscriptions: FakeSubscriptions, tp: TP, to: int) -> None:
        self.subscriptions, self.tp, self.to = subscriptions, tp, to

    async def fetched_records(self, partitions: Any, timeout: float = 0, max_records: Any = None) -> dict[TP, Any]:  # noqa: ASYNC109
        self.subscriptions.assignment.positions[self.tp] = self.to
        return {}


async def test_a_drain_past_markers_reports_the_position_it_moved_to(consumer: K2Consumer) -> None:
    """Seen: commit markers made K2 log "a batch starts at 526 but 525 was expected" and leave a lag of 2 for
    good: the fetcher moved past the marker without a record, and nobody told the pipeline."""
    tp = TP("src", 0)
    subs = FakeSubscriptions({tp: 525})
    subs.reassignment_in_progress = False  # type: ignore[attr-defined]
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, K2ConsumerThread)
    out = PositionedRecords()
    await thread._drain(MovingFetcher(subs, tp, 526), subs, [tp], {tp}, None, out)
    assert dict(out) == {tp: []} and out.positions == {tp: (525, 526)}


async def test_perform_seek_names_only_the_current_assignment(
    consumer: K2Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faust's read offsets can still hold a partition revoked since (its fetch loop writes a read offset
    after a delivery that a revocation interrupted); positioning it failed and stalled the others."""
    sink = Sink({})
    monkeypatch.setattr(type(consumer.app), "batch_sink", property(lambda self: sink))
    stale, mine = TP("src", 0), TP("src", 4)

    async def seek_to_committed() -> dict[TP, int]:
        return {mine: 8}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(consumer, "assignment", lambda: {mine})
    consumer._read_offset[stale] = 5
    await consumer.perform_seek()
    assert sink.sought == [{mine: 8}]


async def test_the_worker_consumer_reads_committed_data_only(consumer: K2Consumer) -> None:
    from aiokafka import AIOKafkaConsumer

    # aiokafka takes the isolation level from this attribute when it starts (and builds its fetcher).
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    thread = consumer._new_consumer_thread()
    made = thread._create_worker_consumer(consumer.app.transport)  # type: ignore[attr-defined]
    assert made._isolation_level == "read_committed"


async def test_the_worker_consumer_fetches_in_batches_of_the_configured_size_and_wait() -> None:
    from aiokafka import AIOKafkaConsumer

    # aiokafka builds its fetcher from these attributes when it starts; faust names neither.
    source = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in source
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source
    app = create_app(Settings(trades_topic="src", fetch_min_bytes=4096, fetch_max_wait_ms=50), CollectorRegistry())
    consumer = app.consumer
    made = consumer._new_consumer_thread()._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    assert (made._fetch_min_bytes, made._fetch_max_wait_ms) == (4096, 50)
    default = Settings(trades_topic="src")
    assert (default.fetch_min_bytes, default.fetch_max_wait_ms) == (65_536, 100)


def test_a_worker_heartbeats_every_second_so_it_hears_of_a_rebalance_within_one() -> None:
    app = create_app(Settings(trades_topic="src", session_timeout_s=45), CollectorRegistry())
    assert app.conf.broker_heartbeat_interval == 1.0
    assert app.conf.broker_session_timeout == 45
