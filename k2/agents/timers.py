"""The flush timer and the lag refresh: thin timers over the pipeline."""

from __future__ import annotations

import logging

import faust

from k2.observe.watch import LagWatch
from k2.pipeline.service import Pipeline
from k2.settings import Settings

__all__ = ["maintenance_timers", "register_timers"]

log = logging.getLogger(__name__)


def register_timers(app: faust.App, pipeline: Pipeline, lag: LagWatch) -> None:
    async def flush_timer() -> None:
        pipeline.gate.request("timer")

    async def refresh_lag() -> None:
        """Keep the lag gauges and the buffered-rows gauge current between scrapes, from a fresh look at the lake."""
        pipeline.publish_buffered_rows()
        pipeline.request_lake_check()
        await lag.refresh()

    async def topics_timer() -> None:
        """Changelog topics follow their source topics' partition counts (partitions added to a source)."""
        await pipeline.grow_changelogs()

    app.timer(interval=pipeline.settings.flush_interval_s, name="k2.flush.timer")(flush_timer)
    app.timer(interval=min(10.0, pipeline.settings.metadata_refresh_s), name="k2.topics.timer")(topics_timer)
    app.timer(interval=lag.interval_s, name="k2.lag.timer")(refresh_lag)
    # One worker of the group maintains the tables (faust runs on_leader timers in the leader only).
    tasks = {"k2.maintain.timer": pipeline.maintain, "k2.expire.timer": pipeline.expire_snapshots}
    for name, interval in maintenance_timers(pipeline.settings).items():
        app.timer(interval=interval, on_leader=True, name=name)(tasks[name])


def maintenance_timers(settings: Settings) -> dict[str, float]:
    """The leader's maintenance timers and their intervals: the whole maintenance, and snapshot expiry alone."""
    timers = {"k2.maintain.timer": settings.maintain_interval_s, "k2.expire.timer": settings.maintain_expire_interval_s}
    return {name: interval for name, interval in timers.items() if interval > 0}
