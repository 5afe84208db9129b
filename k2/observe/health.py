"""``/k2/ready``: every check a worker can fail, each answered within a second even when a dependency hangs.

Facts about the worker itself (assignment, recovery, positioning, stopped or stalled
partitions) are read from memory. Remote dependencies (Kafka, the catalog, the registry)
are asked by :class:`Probe`, which runs each question in a background task and fails a check
on evidence only: the question raised, or nothing succeeded for 30 s. A question that is
merely slow under load is answered with its last success meanwhile (a load balancer must
not see a busy worker as a dead one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from k2.lake.schemas import TABLES
from k2.observe.probes import Check, assignment_check, readiness, recovery_check

__all__ = ["Probe", "Readiness", "ingest_check", "stall_check"]


class Probe:
    """A remote question answered in the background; :meth:`check` never waits longer than ``timeout_s``.

    A check fails on evidence, not on one late reply: the question raised, or nothing has
    succeeded for ``stale_s``. A question that is merely slow (a broker busy under load, a
    consumer thread draining a big fetch) is answered with the last success meanwhile,
    saying how old it is. A success is reused for ``ttl_s`` before the question is asked again.
    """

    def __init__(
        self,
        name: str,
        ask: Callable[[], Awaitable[str]],
        *,
        timeout_s: float = 1.0,
        ttl_s: float = 5.0,
        stale_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._ask = ask
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._clock = clock
        self._task: asyncio.Task[str] | None = None
        self._started = 0.0
        self._last: Check | None = None
        """The last answer (success or failure)."""
        self._ok_at: float | None = None
        self._ok: Check | None = None

    async def check(self) -> Check:
        now = self._clock()
        if self._task is None:
            if self._last is not None and self._last.ok and now - self._started < self.ttl_s:
                return self._last
            self._task = asyncio.ensure_future(self._ask())
            self._started = now
        wait = max(0.0, self.timeout_s - (now - self._started))
        done, _ = await asyncio.wait([self._task], timeout=wait)
        if not done:
            return self._slow(self._clock())
        task, self._task = self._task, None
        exc = task.exception()
        if exc is None:
            result = Check(self.name, True, task.result())
            self._ok, self._ok_at = result, self._clock()
        else:
            result = Check(self.name, False, _describe(exc))
        self._last = result
        return result

    def _slow(self, now: float) -> Check:
        """The question is still out: the last success if it is recent enough, else a failure saying how long."""
        asked = now - self._started
        if self._ok is not None and self._ok_at is not None and now - self._ok_at < self.stale_s:
            return Check(
                self.name, True, f"{self._ok.detail} ({now - self._ok_at:.0f}s ago; asking again for {asked:.0f}s)"
            )
        since = f"no success for {now - self._ok_at:.0f}s" if self._ok_at is not None else "no success yet"
        return Check(self.name, False, f"no answer for {asked:.0f}s ({since})")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def ingest_check(stopped: Mapping[Any, str], not_consuming: Mapping[Any, Any], overdue: Mapping[Any, str]) -> Check:
    """Stopped partitions (fail closed), and held partitions not consuming yet (named with why past their bound)."""
    if stopped:
        parts = ", ".join(f"{tp.topic}/{tp.partition} ({why})" for tp, why in sorted(stopped.items()))
        return Check("ingest", False, f"stopped after a failure: {parts}")
    if overdue:
        parts = "; ".join(f"{tp.topic}/{tp.partition}: {why}" for tp, why in sorted(overdue.items()))
        return Check("ingest", False, f"not consuming past the bound (K2_POSITION_TIMEOUT_S): {parts}")
    if not_consuming:
        phases: dict[str, int] = {}
        for state in not_consuming.values():
            phases[state.phase.value] = phases.get(state.phase.value, 0) + 1
        shown = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
        return Check("ingest", False, f"{len(not_consuming)} partition(s) not consuming yet ({shown})")
    return Check("ingest", True, "every held partition is consuming")


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
            assignment_check(len(pipeline.held())),
            recovery_check(
                rebalancing=bool(self.app.rebalancing),
                in_recovery=bool(getattr(self.app, "in_recovery", False)),
                completed=recovery.completed.is_set(),
                remaining=recovery.active_remaining_total(),
            ),
            ingest_check(pipeline.stopped(), pipeline.not_consuming(), pipeline.overdue()),
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
