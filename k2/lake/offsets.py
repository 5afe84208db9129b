"""Exactly-once bookkeeping: Kafka offsets recorded in Iceberg snapshot summaries. Pure.

Every K2 commit stores, in the summary of the snapshot it creates, the highest Kafka
offset it has landed for *every* (topic, partition) the table has ever received,
cumulatively, so the table's newest K2 snapshot alone says how far the lake got::

    k2.offsets.market.trades.raw.0 = 41234
    k2.offsets.market.trades.raw.1 = 40987
    k2.commit-id                   = 7f3c...
    k2.worker-id                   = host:1234

This is how Iceberg's Kafka Connect and Flink sinks reach exactly-once: the data and
the mark move in one atomic catalog commit, and on restart or retry anything at or
below the mark is dropped before it is written again. The topic is the text between
``k2.offsets.`` and the last dot (Kafka topic names may contain dots, partitions are
digits, so the split is unambiguous).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

from k2.lake.records import TopicPartition
from k2.lake.schemas import SourcePosition

__all__ = [
    "COMMIT_ID_KEY",
    "OFFSET_KEY_PREFIX",
    "WORKER_ID_KEY",
    "batch_offsets",
    "filter_committed_rows",
    "latest_k2_snapshot",
    "merge_offsets",
    "offset_key",
    "offsets_from_summary",
    "read_offsets",
    "summary_properties",
]

OFFSET_KEY_PREFIX = "k2.offsets."
COMMIT_ID_KEY = "k2.commit-id"
WORKER_ID_KEY = "k2.worker-id"

Offsets = dict[TopicPartition, int]


def offset_key(topic: str, partition: int) -> str:
    """The snapshot-summary key holding the last committed offset of ``topic``/``partition``."""
    return f"{OFFSET_KEY_PREFIX}{topic}.{partition}"


def offsets_from_summary(summary: Mapping[str, str]) -> Offsets:
    """The offsets recorded in one snapshot summary (empty when it has none).

    Raises:
        ValueError: a ``k2.offsets.*`` key or value is malformed (the lake was tampered with).
    """
    offsets: Offsets = {}
    for key, value in summary.items():
        if not key.startswith(OFFSET_KEY_PREFIX):
            continue
        topic, sep, partition = key[len(OFFSET_KEY_PREFIX) :].rpartition(".")
        if not sep or not topic or not partition.isdigit():
            raise ValueError(f"malformed K2 offset key in snapshot summary: {key!r}")
        try:
            offsets[(topic, int(partition))] = int(value)
        except ValueError as exc:
            raise ValueError(f"malformed K2 offset in snapshot summary: {key}={value!r}") from exc
    return offsets


def latest_k2_snapshot(table: Table) -> Snapshot | None:
    """The newest snapshot K2 wrote in the current snapshot's history (None if none).

    Walks back past snapshots that K2 did not write (compaction, maintenance, someone
    else's append), which carry no K2 keys. Reads only the metadata ``table`` already
    holds: refresh it first for the latest.
    """
    metadata = table.metadata
    for snapshot in ancestors_of(metadata.current_snapshot(), metadata):
        if snapshot.summary is not None and COMMIT_ID_KEY in snapshot.summary.additional_properties:
            return snapshot
    return None


def read_offsets(table: Table) -> Offsets:
    """The offsets recorded by the newest K2 commit of ``table`` ({} before the first one)."""
    snapshot = latest_k2_snapshot(table)
    if snapshot is None or snapshot.summary is None:
        return {}
    return offsets_from_summary(snapshot.summary.additional_properties)


def merge_offsets(previous: Mapping[TopicPartition, int], new: Mapping[TopicPartition, int]) -> Offsets:
    """Union of both maps keeping the highest offset per (topic, partition): never goes back."""
    merged = dict(previous)
    for tp, offset in new.items():
        if offset > merged.get(tp, -1):
            merged[tp] = offset
    return merged


def summary_properties(offsets: Mapping[TopicPartition, int], commit_id: str, worker_id: str) -> dict[str, str]:
    """The snapshot-summary properties recording ``offsets`` (pass the cumulative map)."""
    properties = {offset_key(topic, partition): str(offset) for (topic, partition), offset in sorted(offsets.items())}
    properties[COMMIT_ID_KEY] = commit_id
    properties[WORKER_ID_KEY] = worker_id
    return properties


def _columns(batch: pa.Table, position: SourcePosition, topic: str | None) -> tuple[pa.ChunkedArray | None, str | None]:
    if position.topic_column is not None:
        return batch[position.topic_column], None
    if topic is None:
        raise ValueError("a table fed by one topic needs that topic to match offsets")
    return None, topic


def filter_committed_rows(
    batch: pa.Table,
    committed: Mapping[TopicPartition, int],
    position: SourcePosition,
    topic: str | None = None,
) -> tuple[pa.Table, int]:
    """Rows of ``batch`` above the committed mark of their (topic, partition), and how many were dropped.

    Args:
        batch: rows carrying their Kafka position in ``position``'s columns.
        committed: the marks, as :func:`read_offsets` gives them.
        position: which columns hold topic (if any), partition and offset.
        topic: the topic of every row, for tables fed by one topic (no topic column).
    """
    topic_column, fixed_topic = _columns(batch, position, topic)
    partitions = batch[position.partition_column]
    offsets = batch[position.offset_column]
    done: pa.ChunkedArray | None = None
    for (tp_topic, tp_partition), mark in committed.items():
        if fixed_topic is not None and tp_topic != fixed_topic:
            continue
        hit = pc.and_(pc.equal(partitions, tp_partition), pc.less_equal(offsets, mark))
        if topic_column is not None:
            hit = pc.and_(hit, pc.equal(topic_column, tp_topic))
        done = hit if done is None else pc.or_(done, hit)
    if done is None:
        return batch, 0
    kept = batch.filter(pc.invert(done))
    return kept, batch.num_rows - kept.num_rows


def batch_offsets(batch: pa.Table, position: SourcePosition, topic: str | None = None) -> Offsets:
    """The highest offset per (topic, partition) present in ``batch``."""
    if batch.num_rows == 0:
        return {}
    topic_column, fixed_topic = _columns(batch, position, topic)
    keys = [position.partition_column] if topic_column is None else [position.topic_column, position.partition_column]
    grouped = batch.select([*keys, position.offset_column]).group_by(keys).aggregate([(position.offset_column, "max")])
    maxima = grouped[f"{position.offset_column}_max"].to_pylist()
    parts = grouped[position.partition_column].to_pylist()
    topics = [fixed_topic] * len(parts) if topic_column is None else grouped[position.topic_column].to_pylist()
    return {(t, p): m for t, p, m in zip(topics, parts, maxima, strict=True)}
