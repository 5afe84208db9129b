"""Readiness as data: named checks, each ok or not with a reason, and the HTTP answer they make.

Kubernetes reads only the status code (200 ready, 503 not); people read the body, which
names every check and says why a failing one failed. The checks themselves are cheap
facts about the worker (assignment, recovery) or remote probes that are cached by
:class:`Cached` so a probe every second does not become a catalog request every second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Cached", "Check", "assignment_check", "readiness", "recovery_check"]

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One readiness condition."""

    name: str
    ok: bool
    detail: str


def assignment_check(source_partitions: int) -> Check:
    """Ready only with source partitions to consume (a worker with none does no work yet)."""
    if source_partitions:
        return Check("partitions", True, f"{source_partitions} source partition(s) assigned")
    return Check("partitions", False, "no source partition assigned yet (joining the group or rebalancing)")


def recovery_check(*, rebalancing: bool, in_recovery: bool, completed: bool, remaining: int) -> Check:
    """Ready only once the buffer tables are restored from their changelogs and streams resumed."""
    if in_recovery:
        return Check("recovery", False, f"restoring buffer tables: {remaining} changelog record(s) to go")
    if rebalancing:
        return Check("recovery", False, "rebalancing")
    if not completed:
        return Check("recovery", False, "table recovery has not run yet")
    return Check("recovery", True, "buffer tables restored")


def readiness(checks: Sequence[Check]) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for ``/k2/ready``: 200 when every check passes, else 503."""
    ready = all(c.ok for c in checks)
    body = {
        "ready": ready,
        "failed": [c.name for c in checks if not c.ok],
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    return (200 if ready else 503), body


class Cached(Generic[T]):
    """The result of an async loader, reused for ``ttl_s`` seconds; concurrent callers share one load.

    A loader that raises is not cached, nor a result ``keep`` refuses (e.g. a failed
    check: a dependency that comes back should make the worker ready at once, not after
    the TTL): the next caller tries again.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[T]],
        ttl_s: float,
        *,
        keep: Callable[[T], bool] = lambda _: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must not be negative")
        self._load = load
        self.ttl_s = ttl_s
        self._keep = keep
        self._clock = clock
        self._value: T | None = None
        self._at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        async with self._lock:
            now = self._clock()
            if self._at is not None and now - self._at < self.ttl_s:
                return self._value  # type: ignore[return-value]
            value = await self._load()
            if self._keep(value):
                self._value, self._at = value, self._clock()
            else:
                self._value, self._at = None, None
            return value
