"""k2.retry: unavailable errors are waited out (for a bounded time when asked), anything else is raised at once."""

from __future__ import annotations

import asyncio
import logging

import pytest
import requests

from k2.retry import Backoff, retry_unavailable, wait_out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def flaky(failures: list[BaseException], result: str = "done"):  # type: ignore[no-untyped-def]
    calls = []

    async def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return call, calls


def test_unavailable_errors_are_waited_out_and_logged_once_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    timeout = requests.exceptions.ReadTimeout("Read timed out. (read timeout=10.0)")
    call, calls = flaky([timeout, timeout, ConnectionRefusedError(111, "refused")])
    with caplog.at_level(logging.INFO, logger="k2.retry"):
        result = asyncio.run(retry_unavailable(call, what="creating a table", sleep=clock.sleep, clock=clock))
    assert result == "done" and len(calls) == 4 and len(clock.slept) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unavailable, retrying" in line for line in lines) == 2  # two causes, not three attempts
    assert any("works again after 4 attempt(s)" in line for line in lines)


def test_anything_else_is_raised_at_once() -> None:
    clock = Clock()
    call, calls = flaky([ValueError("a bad request")])
    with pytest.raises(ValueError, match="a bad request"):
        asyncio.run(retry_unavailable(call, what="x", sleep=clock.sleep, clock=clock))
    assert len(calls) == 1 and clock.slept == []


def test_with_a_bound_the_last_unavailable_error_is_raised_once_the_next_wait_would_pass_it() -> None:
    clock = Clock()
    call, calls = flaky([TimeoutError()] * 100)
    backoff = Backoff(first_s=1.0, max_s=4.0)
    with pytest.raises(TimeoutError):
        asyncio.run(
            retry_unavailable(call, what="x", backoff=backoff, sleep=clock.sleep, clock=clock, give_up_after_s=10.0)
        )
    # waits of about 1, 2, 4 (7.x s); a fourth (4 s) would pass 10 s
    assert len(clock.slept) == 3 and clock.now <= 10.0 and len(calls) == 4


def test_wait_out_runs_a_blocking_call_in_a_thread_until_it_works() -> None:
    failures: list[BaseException] = [requests.exceptions.ReadTimeout("slow")]
    seen = []

    def create() -> str:
        seen.append(1)
        if failures:
            raise failures.pop(0)
        return "table"

    assert wait_out(create, what="creating a table", give_up_after_s=30.0, backoff=Backoff(first_s=0.01)) == "table"
    assert len(seen) == 2
