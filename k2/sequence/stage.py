"""Sequence tracking as a step of the trades or quotes ingress processor (a :class:`~k2.ingest.processor.Stage`).

Thin: :func:`~k2.sequence.track.track` decides; this routes. Duplicates and conflicts
become rejects (original bytes, reason ``duplicate`` or ``sequence_conflict``), gaps a
``gaps`` chunk per partition, the state's writes go to the table's changelog with their
partition named (a batch has no single current event), and counts go to metrics. A fetch's
partitions are tracked joined, in one call; their state writes are sent partition by partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from k2.avro.codec import stored_schema_id
from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import GAPS, ChunkKey
from k2.ingest.frames import JOINED, RawRecord
from k2.ingest.processor import Taken
from k2.lake.arrow import gaps_to_arrow
from k2.lake.records import GapRecord, RejectRecord
from k2.metrics import K2Metrics
from k2.sequence.book import SequenceBook
from k2.sequence.classify import Outcome, Verdict
from k2.sequence.track import track

__all__ = ["CONFLICT_REASON", "DUPLICATE_REASON", "SequenceStage", "sequence_reject"]

DUPLICATE_REASON = "duplicate"
CONFLICT_REASON = "sequence_conflict"


def sequence_reject(
    topic: str, row: dict[str, Any], verdict: Verdict, raw: RawRecord | None, now_ms: int, worker_id: str | None
) -> RejectRecord:
    """The reject of a duplicate or a conflict (``row`` as its table holds it): the original bytes, and why (pure)."""
    name = f"{row.get('exchange') or ''}:{row['symbol']} #{row['sequence_number']}"
    if verdict.outcome is Outcome.DUPLICATE:
        reason, detail = DUPLICATE_REASON, f"{name} already landed from offset {verdict.ref} (same payload)"
    else:
        reason = CONFLICT_REASON
        detail = f"{name} already landed from offset {verdict.ref} with a different payload; the first is kept"
    key = value = None
    headers: tuple[tuple[str, bytes], ...] = ()
    if raw is not None:
        key, value, headers = raw.key, raw.value, raw.headers
    schema_id = stored_schema_id(value)
    return RejectRecord(
        topic,
        row["kafka_partition"],
        row["kafka_offset"],
        reason,
        detail,
        now_ms,
        schema_id,
        key,
        value,
        worker_id,
        headers,
    )


def gap_chunks(gaps: Sequence[GapRecord]) -> list[tuple[ChunkKey, pa.Table]]:
    """One ``gaps`` chunk per partition, keyed by the offsets of the events that revealed the gaps."""
    by_partition: dict[int, list[GapRecord]] = {}
    for gap in gaps:
        by_partition.setdefault(gap.partition, []).append(gap)
    return [
        (ChunkKey(GAPS, p, rows[0].offset, rows[-1].offset, len(rows)), gaps_to_arrow(rows))
        for p, rows in sorted(by_partition.items())
    ]


class SequenceStage:
    """Tracks one source topic's sequence numbers in ``table`` (a Faust table co-partitioned with the topic)."""

    def __init__(self, topic: str, table: Any, window: int, metrics: K2Metrics, worker_id: str | None) -> None:
        self.topic = topic
        self.table = table
        data = table.data  # faust's memory store wraps a plain dict; use the dict itself (hot path)
        self.book = SequenceBook(getattr(data, "data", data), window)
        self.metrics = metrics
        self.worker_id = worker_id
        self.changelog = ChangelogWriter(table)
        self._changes: dict[int, list[tuple[str, bytes | None]]] = {}

    def __call__(self, batch: Taken, now_ms: int) -> list[tuple[ChunkKey, pa.Table]]:
        rows = batch.rows
        if rows is None or not rows.num_rows:
            return []
        partition = batch.frames.partition
        result = track(self.topic, rows, self.book, None if partition == JOINED else partition, now_ms)
        for owner, key, value in result.changes:  # sent, in this order per partition, by persist()
            self._changes.setdefault(owner, []).append((key, value))
        if result.rejected:
            extra = []
            for row, verdict in result.rejected:
                values = rows.slice(row, 1).to_pylist()[0]
                raw = batch.frames.at(values["kafka_partition"], values["kafka_offset"])
                extra.append(sequence_reject(self.topic, values, verdict, raw, now_ms, self.worker_id))
            kept = rows.filter(pa.array(result.keep))
            batch.rows = kept if kept.num_rows else None
            batch.rejected = sorted([*batch.rejected, *extra], key=lambda r: (r.partition, r.offset))
        self._count(result.counts, result.new_gaps)
        return gap_chunks(result.gaps)

    async def persist(self, partition: int) -> list[asyncio.Future[Any]]:
        """Send the state writes of ``partition``'s batch to the changelog, in order; returns their deliveries."""
        return await self.changelog.send_many(partition, self._changes.pop(partition, []))

    def _count(self, counts: dict[str, int], gaps: Sequence[GapRecord]) -> None:
        events = self.metrics.sequence_events
        for label, n in counts.items():
            events.labels(self.topic, label).inc(n)
        for gap in gaps:
            self.metrics.sequence_gaps.labels(self.topic, gap.severity).inc()
            self.metrics.sequence_missing.labels(self.topic, gap.severity).inc(gap.missing)
