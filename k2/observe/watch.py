"""Lag to the consumer group and to the lake, refreshed on a timer and read by views without side effects.

End offsets come from faust's consumer (``highwaters``: a ListOffsets request run on the
consumer's own thread, so nothing blocks the event loop; reading committed data only, these
are the last stable offsets); the group's committed offsets
from what faust's consumer last committed or sought to; the lake's from the marks the
pipeline keeps (read at positioning, moved by every commit). Only partitions this worker
owns are reported, so summing over workers never counts a partition twice. A refresh is
also the worker's proof that Kafka answers (readiness).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from k2.metrics import K2Metrics
from k2.observe.lag import PartitionLag, partition_lags
from k2.pipeline.service import Pipeline

__all__ = ["LagWatch"]

log = logging.getLogger(__name__)


class LagWatch:
    """The last lag reading, and when Kafka last answered."""

    def __init__(self, app: Any, pipeline: Pipeline, metrics: K2Metrics, interval_s: float, timeout_s: float) -> None:
        self.app = app
        self.pipeline = pipeline
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rows: list[PartitionLag] = []
        self.ends: dict[tuple[str, int], int] = {}
        self.kafka_ok_at: float | None = None
        self.kafka_error: str | None = None
        self.read_at: float | None = None

    async def read(self) -> list[PartitionLag]:
        """Both lags of the owned source partitions, read now (end offsets asked of Kafka); changes nothing."""
        owned = self.pipeline.owned()
        if not owned:
            return []
        consumer = self.app.consumer
        # With read_committed, the end offsets asked of Kafka are the last stable offsets; the high
        # watermark of the last fetch says how much an open transaction holds back above them.
        ends = await asyncio.wait_for(consumer.highwaters(*owned), self.timeout_s)
        committed = consumer.committed_offsets()
        rows = partition_lags(
            {(tp.topic, tp.partition): end for tp, end in ends.items()},
            {(tp.topic, tp.partition): off for tp, off in committed.items()},
            self.pipeline.lake_marks,
        )
        held = {(tp.topic, tp.partition): (consumer.highwater(tp) or 0) - end for tp, end in ends.items()}
        return [replace(r, open_transaction=max(0, held.get((r.topic, r.partition), 0))) for r in rows]

    async def refresh(self) -> list[PartitionLag]:
        """A reading published to the lag gauges (the timer's job), and kept for readiness."""
        try:
            self.rows = await self.read()
        except Exception as exc:
            self.kafka_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("lag refresh: no end offsets from Kafka: %s", self.kafka_error)
            return self.rows
        self.kafka_ok_at = time.monotonic()
        self.kafka_error = None
        self.ends = {(r.topic, r.partition): r.end_offset for r in self.rows}
        self.read_at = time.monotonic()
        self.metrics.publish_lag(self.rows)
        return self.rows
