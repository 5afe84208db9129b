"""Sequence tracking as a step of the trades or quotes ingress processor (a :class:`~k2.ingest.processor.Stage`).

Thin: :func:`~k2.sequence.track.track` decides; this routes. Duplicates and conflicts
become rejects (original bytes, reason ``duplicate`` or ``sequence_conflict``), gaps a
``gaps`` chunk per partition, the state's writes go to the table's changelog with their
partition named (a batch has no single current event), and counts go to metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from k2.avro.codec import stored_schema_id
from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import GAPS, ChunkKey
from k2.ingest.classify import BatchOutcome, RawRecord
from k2.lake.arrow import gaps_to_arrow
from k2.lake.records import BufferedEvent, GapRecord, RejectRecord
from k2.metrics import K2Metrics
from k2.sequence.book import SequenceBook
from k2.sequence.classify import Outcome, Verdict
from k2.sequence.track import track

__all__ = ["CONFLICT_REASON", "DUPLICATE_REASON", "SequenceStage", "sequence_reject"]

DUPLICATE_REASON = "duplicate"
CONFLICT_REASON = "sequence_conflict"


def sequence_reject(
    event: BufferedEvent, verdict: Verdict, raw: RawRecord | None, now_ms: int, worker_id: str | None
) -> RejectRecord:
    """The reject of a duplicate or a conflict: the original key and value bytes, and why (pure)."""
    r = event.record
    name = f"{r.get('exchange') or ''}:{r['symbol']} #{r['sequence_number']}"
    if verdict.outcome is Outcome.DUPLICATE:
        reason, detail = DUPLICATE_REASON, f"{name} already landed from offset {verdict.ref} (same payload)"
    else:
        reason = CONFLICT_REASON
        detail = f"{name} already landed from offset {verdict.ref} with a different payload; the first is kept"
    key = value = None
    if raw is not None:
        key, value = raw.key, raw.value
    schema_id = stored_schema_id(value)
    return RejectRecord(
        event.topic, event.partition, event.offset, reason, detail, now_ms, schema_id, key, value, worker_id
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
        self._changes: list[tuple[int, str, bytes | None]] = []

    def __call__(
        self, records: Sequence[RawRecord], outcome: BatchOutcome, now_ms: int
    ) -> list[tuple[ChunkKey, pa.Table]]:
        if not outcome.accepted:
            return []
        result = track(self.topic, outcome.accepted, self.book, now_ms)
        self._changes.extend(result.changes)  # sent, in this order, by persist()
        outcome.accepted = result.accepted
        if result.rejected:
            raw = {(r.partition, r.offset): r for r in records}
            extra = [
                sequence_reject(e, v, raw.get((e.partition, e.offset)), now_ms, self.worker_id)
                for e, v in result.rejected
            ]
            outcome.rejected = sorted([*outcome.rejected, *extra], key=lambda r: (r.partition, r.offset))
        self._count(result.counts, result.new_gaps)
        return gap_chunks(result.gaps)

    async def persist(self) -> list[asyncio.Future[Any]]:
        """Send the batch's state writes to the changelog, in order; returns their deliveries."""
        changes, self._changes = self._changes, []
        return [await self.changelog.send(partition, key, value) for partition, key, value in changes]

    def _count(self, counts: dict[str, int], gaps: Sequence[GapRecord]) -> None:
        events = self.metrics.sequence_events
        for label, n in counts.items():
            events.labels(self.topic, label).inc(n)
        for gap in gaps:
            self.metrics.sequence_gaps.labels(self.topic, gap.severity).inc()
            self.metrics.sequence_missing.labels(self.topic, gap.severity).inc(gap.missing)
