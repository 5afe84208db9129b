"""Lag to the consumer group and to the lake, read from the running app; refreshed on a timer.

End offsets come from faust's consumer (``highwaters``: a ListOffsets request run on the
consumer's own thread, so nothing blocks the event loop); the group's committed offsets
from what faust's consumer last committed or sought to; the lake's from the marks the
runtime keeps (see :attr:`k2.runtime.Runtime.lake_marks`). Only partitions assigned to
this worker are reported, so summing over workers never counts a partition twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from k2.agents.wiring import metrics, runtime, settings
from k2.app import app
from k2.lake.records import TopicPartition
from k2.observe.lag import PartitionLag, partition_lags

__all__ = ["committed_offsets", "current_lag", "source_partitions"]

log = logging.getLogger(__name__)

#: Lag changes at most once per flush: refreshing more often only costs requests (and not
#: under 2 s, since a refresh after a rebalance reads every table's offsets from the catalog).
LAG_REFRESH_S = min(5.0, max(2.0, settings.flush_interval_s))

_seen: set[TopicPartition] = set()


def source_partitions() -> list[TopicPartition]:
    """The source-topic partitions assigned to this worker (changelog partitions left out)."""
    topics = set(settings.source_topics)
    return sorted((tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in topics)


def committed_offsets() -> Mapping[TopicPartition, int | None]:
    """The next offset the group reads per partition, as faust's consumer last committed or sought it.

    faust keeps this in ``Consumer._committed_offset`` (updated on every commit and on the
    seek after each rebalance) and offers no public accessor; its monitor's copy is
    cleared on every rebalance, so it is only the fallback.
    """
    committed = getattr(app.consumer, "_committed_offset", None)
    if committed is None:
        committed = app.monitor.tp_committed_offsets
    return {(tp.topic, tp.partition): offset for tp, offset in dict(committed).items()}


async def current_lag() -> list[PartitionLag]:
    """Both lags for every owned source partition, published to the lag gauges as a side effect."""
    owned = source_partitions()
    rows: list[PartitionLag] = []
    if owned:
        if set(owned) - _seen and runtime.lake_ready:
            # Partitions that moved here may have landed further under another worker.
            await runtime.reload_lake_marks()
        _seen.clear()
        _seen.update(owned)
        by_tp = {(tp.topic, tp.partition): tp for tp in app.consumer.assignment()}
        ends = await app.consumer.highwaters(*(by_tp[tp] for tp in owned))
        rows = partition_lags(
            {(tp.topic, tp.partition): end for tp, end in ends.items()}, committed_offsets(), runtime.lake_marks
        )
    metrics.publish_lag(rows)
    return rows


@app.timer(interval=LAG_REFRESH_S, name="k2.lag.timer")
async def refresh_lag() -> None:
    """Keep the lag gauges current between views, and the buffer gauge too (chunks restored from a
    changelog after a restart are buffered rows no micro-batch has counted yet)."""
    runtime.flusher.publish_buffered_rows()
    try:
        await current_lag()
    except Exception as exc:  # a failed refresh leaves the last values; the next tick tries again
        log.warning("lag refresh failed: %s: %s", type(exc).__name__, exc)
