"""Waiting out a service that is unavailable: one helper, retrying typed "unavailable" errors only.

What counts as unavailable is decided in one place (:func:`k2.errors.is_unavailable`):
timeouts, refused connections, a locked SQLite catalog, Kafka's retriable errors. Anything
else is raised at once: retrying a bug or a bad request only hides it. Each new cause is
logged once (at ``error`` level by default), and once more when the call works again, so
an outage makes two log lines, not one per attempt. A worker waits for as long as it takes
(readiness says why meanwhile); a command gives up after ``give_up_after_s`` and raises the
last error, which it turns into one line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from k2.errors import describe, is_unavailable

__all__ = ["Backoff", "retry_unavailable", "wait_out"]

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
    give_up_after_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``await call()`` until it returns, waiting out :func:`~k2.errors.is_unavailable` errors.

    Args:
        what: what is being done, for the log ("reading the lake's marks").
        on_unavailable: told each cause as it is waited out (readiness shows it).
        give_up_after_s: raise the last unavailable error rather than wait past this many
            seconds from the first attempt (``None``: wait for as long as it takes).
    """
    attempt = 0
    cause: str | None = None
    started = clock()
    while True:
        try:
            result = await call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            attempt += 1
            delay = backoff.delay(attempt)
            if give_up_after_s is not None and clock() - started + delay > give_up_after_s:
                raise
            now = describe(exc)
            if now != cause:
                log.log(level, "%s: unavailable, retrying: %s", what, now)
                cause = now
            on_unavailable(now)
            await sleep(delay)
            continue
        if cause is not None:
            log.info("%s: works again after %d attempt(s)", what, attempt + 1)
        return result


def wait_out(
    call: Callable[[], T],
    *,
    what: str,
    give_up_after_s: float,
    backoff: Backoff = Backoff(),
    level: int = logging.WARNING,
) -> T:
    """:func:`retry_unavailable` for a blocking ``call`` outside an event loop (a command), run in a thread."""
    return asyncio.run(
        retry_unavailable(
            lambda: asyncio.to_thread(call), what=what, backoff=backoff, level=level, give_up_after_s=give_up_after_s
        )
    )
