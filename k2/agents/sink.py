"""The Iceberg sink agent and the flush timer that drives it."""

from __future__ import annotations

from typing import Any

from k2.agents.ingress import request_flush
from k2.agents.wiring import flush_requests, runtime, settings
from k2.app import app


def owned_partitions() -> dict[str, set[int]]:
    """Source partitions assigned to this worker, by topic."""
    owned: dict[str, set[int]] = {}
    for tp in app.consumer.assignment():
        owned.setdefault(tp.topic, set()).add(tp.partition)
    return owned


@app.agent(flush_requests, name="k2.iceberg.sink", concurrency=1)
async def iceberg_sink(requests: Any) -> None:
    """Serialises flushes: each request commits everything buffered for owned partitions."""
    async for _reason in requests:
        recovering = bool(app.rebalancing or getattr(app, "in_recovery", False))
        await runtime.flush(owned_partitions(), recovering)


@app.timer(interval=settings.flush_interval_s, name="k2.flush.timer")
async def flush_timer() -> None:
    if not runtime.flush_pending:
        runtime.flush_pending = True
        await request_flush("timer")


@app.task
async def prepare_lake() -> None:
    """Load the catalog and create missing tables as the worker starts (off the event loop)."""
    await runtime.start()
