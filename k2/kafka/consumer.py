"""Faust's aiokafka consumer with batch delivery for K2's source topics and K2-owned commit offsets.

Two changes to faust's consumer, both limited to the topics a :class:`BatchSink` names:

* **Delivery.** faust turns every fetched record into a message, an event and several
  awaits on its way to an agent. For K2's source topics the fetch loop instead yields one
  message per (topic, fetch) carrying a :class:`~k2.kafka.batches.TopicFetch`: a batch per
  partition, with the consumer's positions before and after the fetch, read on the consumer
  thread at the moment the records are drained. Changelog and other topics keep faust's own
  path.
* **Acknowledgement.** faust acknowledges an event when its stream moves past it, also
  when the agent that took it crashed (a ``take_events`` batch is acked in a ``finally``),
  and it acks *and skips* events it pulls while flow is suspended for a rebalance or that
  belong to an older generation; the commit at revocation then covers events nobody
  processed. K2's source topics are declared with ``acks=False``, so faust keeps no ack
  state for them at all, and the offsets faust commits for them come from the sink: the
  position up to which every record's row or reject is durable. faust still decides
  *when* to commit (its interval, at revocation, at shutdown), still owns group
  membership, assignment and table recovery, and still commits through its own path.

Private faust/aiokafka names used here (pinned by ``tests/unit/test_kafka_consumer.py``,
so an upgrade that changes them fails loudly): ``Consumer._new_offset``,
``Consumer._filter_tps_with_pending_acks``, ``Consumer._read_offset``, ``Consumer._committed_offset``,
``AIOKafkaConsumerThread._fetch_records`` (and the ``_fetcher``, ``_subscriptions`` and
``_create_fetch_waiter`` it reaches, as faust's own version does), and aiokafka's
``AIOKafkaConsumer._isolation_level`` (set before the consumer starts: read committed data only).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Protocol, cast

from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message

from k2.kafka.batches import FetchedBatch, TopicFetch, fetch_message

__all__ = ["ISOLATION_LEVEL", "BatchSink", "K2Consumer", "K2ConsumerThread", "PositionedRecords", "positions_of"]


class BatchSink(Protocol):
    """What the consumer needs from K2's pipeline (see :class:`k2.pipeline.service.Pipeline`)."""

    @property
    def batch_topics(self) -> frozenset[str]:
        """Topics delivered as batches, whose commit offsets the sink decides."""
        ...

    def commit_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp`` (the next one to read), or None when nothing new is durable."""
        ...

    def committable(self) -> Iterable[TP]:
        """Partitions whose durable position moved since it was last committed."""
        ...

    async def on_revoke(self, tps: set[TP]) -> None:
        """Called before faust revokes ``tps``: stop taking their batches, let in-flight ones become durable."""
        ...

    def on_assign(self, tps: set[TP], generation: int) -> None:
        """faust assigned ``tps`` (of the batch topics) in ``generation``; its tables are restored next."""
        ...

    async def on_seek(self, positions: Mapping[TP, int | None], generation: int) -> None:
        """faust sought the assigned partitions to the committed offsets (after the restore); may seek again."""
        ...


class PositionedRecords(dict[TP, list[Any]]):
    """A fetch result that also says, per partition of a batch topic, its position before and after."""

    positions: dict[TP, tuple[int, int]]

    def __init__(self) -> None:
        super().__init__()
        self.positions = {}


def positions_of(subscriptions: Any, tps: Iterable[TP]) -> dict[TP, int]:
    """The consumer's current position of each assigned partition in ``tps`` that has a valid one."""
    assignment = subscriptions.subscription.assignment if subscriptions.subscription is not None else None
    out: dict[TP, int] = {}
    if assignment is None:
        return out
    for tp in tps:
        try:
            state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        except KeyError:
            continue
        if state is not None and state.has_valid_position:
            out[tp] = state.position
    return out


#: K2 reads what producers committed only: records of aborted transactions never land, and a
#: transaction still open holds back what follows it (its end is the last stable offset).
ISOLATION_LEVEL = "read_committed"


class K2ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The consumer thread: reads committed data only; its fetch also reports positions for batch topics."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust reads committed data only when it runs its own transactions (processing_guarantee
        # exactly_once), which K2 does not use; aiokafka takes the level when it starts, from this.
        consumer._isolation_level = ISOLATION_LEVEL
        # faust passes no fetch.min.bytes (1: a fetch answers with whatever just arrived) and a
        # fetch.max.wait.ms of 1.5 s; aiokafka builds its fetcher from these when it starts.
        settings = getattr(self.consumer.app, "k2_settings", None)
        if settings is not None:
            consumer._fetch_min_bytes = settings.fetch_min_bytes
            consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,  # noqa: ASYNC109 - faust's signature, called by faust
        max_records: int | None = None,
    ) -> RecordMap:
        out = PositionedRecords()
        if not self.consumer.flow_active:
            return out
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        subscriptions = fetcher._subscriptions
        batch_topics = cast(K2Consumer, self.consumer).batch_topics
        watched = [tp for tp in active_partitions if tp.topic in batch_topics]
        with subscriptions.fetch_context():
            records = await self._drain(fetcher, subscriptions, watched, active_partitions, max_records, out)
            if not records and timeout:
                # Wait for the background fetcher without draining, then drain at once: a
                # position read before a drain that waits could be moved by a seek meanwhile.
                waiter = fetcher._create_fetch_waiter()
                await asyncio.wait([waiter], timeout=timeout)
                await self._drain(fetcher, subscriptions, watched, active_partitions, max_records, out)
        return out

    async def _drain(
        self,
        fetcher: Any,
        subscriptions: Any,
        watched: list[TP],
        active_partitions: set[TP],
        max_records: int | None,
        out: PositionedRecords,
    ) -> PositionedRecords:
        if subscriptions.reassignment_in_progress:
            return out
        before = positions_of(subscriptions, watched)
        records = await fetcher.fetched_records(active_partitions, timeout=0, max_records=max_records)
        after = positions_of(subscriptions, before)
        for tp, recs in records.items():
            out[tp] = recs
            if tp in after:
                out.positions[tp] = (before[tp], after[tp])
        for tp, position in after.items():
            if tp not in records and position != before[tp]:
                # The fetcher moved past offsets that hold no record K2 reads (transaction markers,
                # aborted records under read_committed): an empty batch says so, or the next batch
                # would seem to start after a hole.
                out[tp] = []
                out.positions[tp] = (before[tp], position)
        return out


class K2Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer; batch topics are delivered per fetch and committed where the sink says."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return K2ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def sink(self) -> BatchSink | None:
        return cast(BatchSink | None, getattr(self.app, "batch_sink", None))

    @property
    def batch_topics(self) -> frozenset[str]:
        sink = self.sink
        return sink.batch_topics if sink is not None else frozenset()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - faust's
        """faust's ``getmany``, with one message per batch topic: its fetched partitions' batches."""
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As faust does: a fetch that returns while flow is stopped is dropped, and the
            # partitions go back to their committed offsets.
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        batch_topics = self.batch_topics
        positions = getattr(records, "positions", {})
        others: dict[TP, list[Any]] = {}
        fetched: dict[str, list[FetchedBatch]] = {}
        for tp, recs in records.items():
            if tp.topic not in batch_topics:
                others[tp] = recs
                continue
            if not recs and tp not in positions:
                continue
            start, end = positions.get(tp) or (recs[0].offset, recs[-1].offset + 1)
            fetched.setdefault(tp.topic, []).append(
                FetchedBatch(TP(tp.topic, tp.partition), start, end, recs, generation_id)
            )
        for batches in fetched.values():
            # Checked when yielded: delivering the topic before may have waited through a rebalance.
            deliverable = [b for b in batches if self._deliverable(b.tp, active_partitions, generation_id)]
            if not deliverable:
                continue
            for b in deliverable:
                self.app.monitor.track_tp_end_offset(b.tp, self.highwater(b.tp))
            fetch = TopicFetch(tuple(sorted(deliverable, key=lambda b: b.partition)))
            yield fetch.batches[0].tp, fetch_message(fetch)
        if others:
            to_message = self._to_message
            for tp, record in self.scheduler.iterate(others):
                if not self._deliverable(tp, active_partitions, generation_id):
                    break
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)

    def _deliverable(self, tp: TP, active_partitions: set[TP] | None, generation_id: int) -> bool:
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            return False
        return active_partitions is None or tp in active_partitions or tp in self._buffered_partitions

    # -- commits: offsets of batch topics come from the sink --------------------------

    def _new_offset(self, tp: TP) -> int | None:
        sink = self.sink
        if sink is not None and tp.topic in sink.batch_topics:
            return sink.commit_offset(tp)
        return cast(int | None, super()._new_offset(tp))

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen: set[TP] = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        sink = self.sink
        if sink is None:
            return
        for tp in sink.committable():
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def committed_offsets(self) -> dict[TP, int | None]:
        """The next offset the group reads per partition, as this consumer last committed or sought it."""
        return dict(self._committed_offset)

    # -- rebalances and seeks ------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        sink = self.sink
        if sink is not None:
            await sink.on_revoke({TP(tp.topic, tp.partition) for tp in revoked if tp.topic in sink.batch_topics})
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        sink = self.sink
        if sink is not None:
            topics = sink.batch_topics
            sink.on_assign({TP(tp.topic, tp.partition) for tp in assigned if tp.topic in topics}, generation_id)
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        """faust's seek of its assignment to the committed offsets, then the sink told what it sought.

        Only partitions of the consumer's current assignment are named: faust's read offsets
        can still hold partitions revoked since (its fetch loop writes a partition's read
        offset after a delivery that a revocation interrupted), and those are not this
        worker's to position.
        """
        generation = self.app.consumer_generation_id
        await super().perform_seek()
        sink = self.sink
        if sink is not None:
            topics = sink.batch_topics
            assigned = {TP(tp.topic, tp.partition) for tp in self.assignment() if tp.topic in topics}
            committed = {TP(tp.topic, tp.partition): offset for tp, offset in self._read_offset.items()}
            await sink.on_seek({tp: committed.get(tp) for tp in assigned}, generation)
