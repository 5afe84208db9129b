"""Changelog topics follow their source topics' partition counts (pure plan; the I/O is in the fault suite)."""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.transport.drivers import aiokafka as faust_aiokafka

from k2.admin.growth import changelogs_to_grow

TOPICS = {"trades": ["k2-buffer-trades-changelog", "k2-sequences-trades-changelog"], "ref": ["k2-buffer-ref-changelog"]}


def test_changelogs_behind_their_source_grow_to_its_count() -> None:
    counts = {"trades": 9, "k2-buffer-trades-changelog": 6, "k2-sequences-trades-changelog": 9, "ref": 1}
    counts["k2-buffer-ref-changelog"] = 1
    assert changelogs_to_grow(counts, TOPICS) == {"k2-buffer-trades-changelog": 9}


def test_missing_topics_and_changelogs_ahead_are_left_alone() -> None:
    assert changelogs_to_grow({"trades": 6}, TOPICS) == {}  # changelogs not created yet: faust makes them
    assert changelogs_to_grow({"k2-buffer-trades-changelog": 3}, TOPICS) == {}  # no source: nothing to match
    ahead = {"trades": 6, "k2-buffer-trades-changelog": 9, "k2-sequences-trades-changelog": 6}
    assert changelogs_to_grow(ahead, TOPICS) == {}


def test_faust_producer_internals_k2_reads_are_still_there() -> None:
    """k2.kafka.metadata and k2.buffer.changelog reach the aiokafka producer through faust's ``_ensure_producer``."""
    assert callable(faust_aiokafka.Producer._ensure_producer)
    assert "return self._producer" in inspect.getsource(faust_aiokafka.Producer._ensure_producer)
    assert list(inspect.signature(AIOKafkaClient.add_topic).parameters) == ["self", "topic"]
    # What ChangelogWriter.send_many calls on it (aiokafka's public batch API).
    assert list(inspect.signature(AIOKafkaProducer.create_batch).parameters) == ["self"]
    assert list(inspect.signature(AIOKafkaProducer.send_batch).parameters) == ["self", "batch", "topic", "partition"]
    assert list(inspect.signature(BatchBuilder.append).parameters) == ["self", "timestamp", "key", "value", "headers"]
