"""Waiting out a service that is unavailable: one helper, retrying typed "unavailable" errors only.

What counts as unavailable is decided in one place (:func:`k2.errors.is_unavailable`):
timeouts, refused connections, a locked SQLite catalog, Kafka's retriable errors. Anything
else is raised at once: retrying a bug or a bad request only hides it. Each new cause is
logged once (at ``error`` level by default), and once more when the call works again, so
an outage makes two log lines, not one per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from k2.errors import describe, is_unavailable

__all__ = ["Backoff", "retry_unavailable"]

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: ``first_s``, doubling up to ``max_s``, with up to 10% jitter."""

    first_s: float = 1.0
    max_s: float = 15.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.first_s * 2 ** max(0, attempt - 1))
        return base * (1.0 + 0.1 * rng())


async def retry_unavailable(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff = Backoff(),
    on_unavailable: Callable[[str], None] = lambda cause: None,
    level: int = logging.ERROR,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await call()`` until it returns, waiting out :func:`~k2.errors.is_unavailable` errors.

    Args:
        what: what is being done, for the log ("reading the lake's marks").
        on_unavailable: told each cause as it is waited out (readiness shows it).
    """
    attempt = 0
    cause: str | None = None
    while True:
        try:
            result = await call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            attempt += 1
            now = describe(exc)
            if now != cause:
                log.log(level, "%s: unavailable, retrying: %s", what, now)
                cause = now
            on_unavailable(now)
            await sleep(backoff.delay(attempt))
            continue
        if cause is not None:
            log.info("%s: works again after %d attempt(s)", what, attempt + 1)
        return result
