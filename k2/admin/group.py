"""The consumer group and the source partitions as Kafka sees them, through one AdminClient, every call bounded.

:class:`GroupAdmin` asks; :func:`read_group_status` puts its answers together with the
lake's marks and a reader of first records into the group's view
(:class:`k2.observe.group.GroupStatus`, pure), for ``k2 status``, ``k2 tables`` and ``k2 audit``.

Faust's members join with their own assignor protocol (``faust``), but the assignment they
send is Kafka's consumer protocol with faust's data in its user-data field, so Kafka's
description of the group parses it: each member's partitions, source topics, changelogs and
faust's assignor topic alike (``tests/integration/test_status.py`` checks it on a real worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.admin.watermarks import FirstRecord, LogEnds, log_ends, partitions_of
from k2.errors import NotInitialised, ServiceUnavailable
from k2.lake.records import TopicPartition
from k2.observe.group import (
    Group,
    GroupStatus,
    Member,
    consumer_start,
    lake_start,
    partition_statuses,
    reuse_first,
)
from k2.settings import Settings

__all__ = ["FirstRecords", "GroupAdmin", "read_group_status"]

FirstRecords = Callable[
    [Mapping[TopicPartition, int], Mapping[TopicPartition, int]], dict[TopicPartition, FirstRecord | None]
]
"""Per partition, the first committed record at or after a start and below an end (:meth:`KafkaLog.first_records`)."""


class GroupAdmin:
    """Kafka's answers about the source partitions and the consumer group; each call within ``timeout_s``."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._errors = ConnectErrors()
        self._admin = AdminClient(client_conf(settings, errors=self._errors))

    def _unavailable(self, what: str, exc: BaseException) -> ServiceUnavailable:
        return ServiceUnavailable(f"cannot {what} ({exc}): {self._errors.unavailable(self.settings, self._admin)}")

    def partitions(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """The partitions of each of ``topics`` that exists.

        Raises:
            ServiceUnavailable: the cluster does not answer, or refuses K2's credentials.
        """
        metadata = cluster_metadata(self._admin, self.settings, self._errors, self.timeout_s)
        return partitions_of(metadata, topics)

    def ends(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, LogEnds]:
        """Log start, last stable offset and high watermark of each partition."""
        try:
            return log_ends(self._admin, partitions, self.timeout_s)
        except KafkaException as exc:
            raise self._unavailable("read the end offsets", exc) from exc

    def group(self, group_id: str) -> Group:
        """The group's state, assignor and members with their assignments (a group Kafka does not know: ``dead``)."""
        try:
            future = self._admin.describe_consumer_groups([group_id], request_timeout=self.timeout_s)[group_id]
            found = future.result(self.timeout_s + 5)
        except (KafkaException, TimeoutError) as exc:
            raise self._unavailable(f"describe consumer group {group_id}", exc) from exc
        members = tuple(
            Member(
                m.member_id,
                m.client_id,
                m.host,
                frozenset((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else ())),
            )
            for m in found.members
        )
        state = found.state.name.lower() if found.state is not None else "unknown"
        return Group(group_id, state, members, found.partition_assignor or "")

    def committed(self, group_id: str, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None where it committed none)."""
        if not partitions:
            return {}
        request = ConsumerGroupTopicPartitions(group_id, [KafkaTopicPartition(t, p) for t, p in partitions])
        try:
            future = self._admin.list_consumer_group_offsets([request], request_timeout=self.timeout_s)[group_id]
            found = future.result(self.timeout_s + 5)
        except (KafkaException, TimeoutError) as exc:
            raise self._unavailable(f"read the offsets group {group_id} committed", exc) from exc
        return {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 and tp.error is None else None
            for tp in found.topic_partitions
        }


def read_group_status(
    admin: GroupAdmin,
    first_records: FirstRecords,
    topics: Sequence[str],
    marks: Mapping[TopicPartition, int],
    *,
    group_id: str | None = None,
    strict: bool = False,
    clock: Callable[[], float] = time.time,
) -> GroupStatus:
    """The group's view of every partition of ``topics`` (those that exist) against the lake's ``marks``.

    Reads the log ends first, then the group and its offsets, then the first record waiting
    for the lake and for the group in each partition (one read for both where one answers
    both); the lake's marks were read before any of it, so a mark is never ahead of an end.

    Args:
        strict: a topic that does not exist is an error (else it is left out).

    Raises:
        ServiceUnavailable: Kafka does not answer within the timeouts.
        NotInitialised: with ``strict``, a topic does not exist.
    """
    group_id = group_id or admin.settings.app_id
    found = admin.partitions(topics)
    absent = [t for t in topics if t not in found]
    if strict and absent:
        raise NotInitialised(
            f"topic {', '.join(absent)} does not exist on Kafka at {admin.settings.kafka_bootstrap_servers}: run "
            "`k2 init`, or point the K2_*_TOPIC settings at K2's topics"
        )
    partitions = [(t, p) for t, ps in found.items() for p in ps]
    ends = admin.ends(partitions)
    group = admin.group(group_id)
    committed = admin.committed(group_id, partitions)
    stable = {tp: e.stable for tp, e in ends.items()}
    lake_from = {tp: lake_start(e, marks.get(tp)) for tp, e in ends.items()}
    waiting = first_records(lake_from, stable)
    consumer_from = {tp: consumer_start(e, committed.get(tp)) for tp, e in ends.items()}
    consumer_next: dict[TopicPartition, FirstRecord | None] = {}
    ask: dict[TopicPartition, int] = {}
    for tp, start in consumer_from.items():
        known, record = reuse_first(start, lake_from[tp], waiting.get(tp))
        if known:
            consumer_next[tp] = record
        else:
            ask[tp] = start
    consumer_next.update(first_records(ask, stable))
    read_at_ms = int(clock() * 1000)
    return GroupStatus(group, partition_statuses(ends, committed, marks, group, waiting, consumer_next), read_at_ms)
