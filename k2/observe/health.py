"""``/k2/ready``: every check a worker can fail, each answered within a second even when a dependency hangs.

Facts about the worker itself (assignment, recovery, positioning, stopped or stalled
partitions) are read from memory. Remote dependencies (Kafka, the catalog, the registry)
are asked by :class:`Probe`, which runs each question in a background task: a probe that
does not answer within its deadline fails the check at once ("no answer within 1s"), and
while it is still running the next request says for how long, instead of waiting again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from k2.lake.schemas import TABLES
from k2.observe.probes import Check, assignment_check, readiness, recovery_check

__all__ = ["Probe", "Readiness", "ingest_check", "stall_check"]


class Probe:
    """A remote question answered in the background; :meth:`check` never waits longer than ``timeout_s``."""

    def __init__(
        self,
        name: str,
        ask: Callable[[], Awaitable[str]],
        *,
        timeout_s: float = 1.0,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._ask = ask
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._task: asyncio.Task[str] | None = None
        self._started = 0.0
        self._last: Check | None = None
        self._last_at = 0.0

    async def check(self) -> Check:
        now = self._clock()
        if self._task is None:
            if self._last is not None and self._last.ok and now - self._last_at < self.ttl_s:
                return self._last
            self._task = asyncio.ensure_future(self._ask())
            self._started = now
        elif not self._task.done():
            waited = now - self._started
            if waited >= self.timeout_s:
                return Check(self.name, False, f"no answer for {waited:.0f}s")
        done, _ = await asyncio.wait([self._task], timeout=max(0.0, self.timeout_s - (now - self._started)))
        if not done:
            return Check(self.name, False, f"no answer within {self.timeout_s:g}s")
        task, self._task = self._task, None
        exc = task.exception()
        result = Check(self.name, True, task.result()) if exc is None else Check(self.name, False, _describe(exc))
        self._last, self._last_at = result, self._clock()
        return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def ingest_check(stopped: Mapping[Any, str], unpositioned: Iterable[Any]) -> Check:
    """Stopped partitions (fail closed) and partitions still waiting for their start position."""
    unpositioned = list(unpositioned)
    if stopped:
        parts = ", ".join(f"{tp.topic}/{tp.partition} ({why})" for tp, why in sorted(stopped.items()))
        return Check("ingest", False, f"stopped after a failure: {parts}")
    if unpositioned:
        return Check(
            "ingest", False, f"{len(unpositioned)} partition(s) waiting for their start position (the lake's marks)"
        )
    return Check("ingest", True, "every owned partition is taken")


def stall_check(
    lag: Mapping[tuple[str, int], int],
    last_taken: Mapping[tuple[str, int], float],
    positioned_at: float | None,
    now: float,
    stall_after_s: float,
) -> Check:
    """Partitions with events waiting that no batch was taken from for ``stall_after_s`` (a stuck or crashed agent)."""
    stalled = []
    for tp, waiting in sorted(lag.items()):
        if waiting <= 0:
            continue
        since = last_taken.get(tp, positioned_at)
        if since is not None and now - since >= stall_after_s:
            stalled.append(f"{tp[0]}/{tp[1]} ({waiting} waiting, nothing taken for {now - since:.0f}s)")
    if stalled:
        return Check("progress", False, "no progress: " + ", ".join(stalled))
    return Check("progress", True, "partitions with lag are moving")


class Readiness:
    """The checks of ``/k2/ready``, over the pipeline, the lag watch and the app (see the module docstring)."""

    def __init__(self, app: Any, pipeline: Any, lag: Any, *, timeout_s: float = 1.0) -> None:
        self.app = app
        self.pipeline = pipeline
        self.lag = lag
        self.kafka = Probe("kafka", self._kafka, timeout_s=timeout_s)
        self.catalog = Probe("catalog", self._catalog, timeout_s=timeout_s)
        self.registry = Probe("registry", self._registry, timeout_s=timeout_s)

    async def answer(self) -> tuple[int, dict[str, Any]]:
        pipeline = self.pipeline
        recovery = self.app.tables.recovery
        now = time.monotonic()
        owned = pipeline.owned()
        frontiers = pipeline.ledger.frontiers()
        waiting = {
            (tp.topic, tp.partition): self.lag.ends.get((tp.topic, tp.partition), 0) - frontiers.get(tp, 0)
            for tp in owned
            if tp in frontiers
        }
        checks = [
            assignment_check(len(owned)),
            recovery_check(
                rebalancing=bool(self.app.rebalancing),
                in_recovery=bool(getattr(self.app, "in_recovery", False)),
                completed=recovery.completed.is_set(),
                remaining=recovery.active_remaining_total(),
            ),
            ingest_check(pipeline.stopped(), pipeline.unpositioned()),
            stall_check(
                waiting,
                {(tp.topic, tp.partition): t for tp, t in pipeline.last_taken.items()},
                pipeline.positioned_at,
                now,
                pipeline.settings.stall_after_s,
            ),
            *await asyncio.gather(self.kafka.check(), self.catalog.check(), self.registry.check()),
        ]
        failing = pipeline.flusher.failing
        checks.append(
            Check(
                "sink", not failing, "; ".join(f"{t}: {why}" for t, why in sorted(failing.items())) or "commits succeed"
            )
        )
        return readiness(checks)

    async def _kafka(self) -> str:
        tps = self.pipeline.owned()
        if not tps:
            return "no partition owned to ask about"
        ends = await self.app.consumer.highwaters(*tps[:1])
        return f"end offsets read ({len(ends)} partition(s))"

    async def _catalog(self) -> str:
        pipeline = self.pipeline
        if not pipeline.lake_ready.is_set():
            raise RuntimeError(pipeline.lake_error or "the catalog is being loaded")

        def call() -> str:
            catalog = pipeline.writer().catalog
            present = {
                ".".join(ident) for ns in {name.split(".")[0] for name in TABLES} for ident in catalog.list_tables(ns)
            }
            missing = sorted(set(TABLES) - present)
            if missing:
                raise RuntimeError(f"table(s) missing: {', '.join(missing)}")
            return f"{len(TABLES)} tables present"

        return await asyncio.to_thread(call)

    async def _registry(self) -> str:
        return await self.pipeline.registry.ping()
