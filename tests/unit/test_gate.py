"""The flush gate, state by state: requests coalesce, the bound holds, room comes back after a flush."""

from __future__ import annotations

import asyncio

import pytest

from k2.pipeline.gate import FlushGate


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FlushGate(0)


async def test_reaching_the_limit_requests_one_flush() -> None:
    gate = FlushGate(100)
    gate.added(60)
    assert gate.requested is None
    gate.added(40)
    assert gate.requested == "size"
    gate.request("timer")  # coalesces: the first reason stays
    assert await gate.next_request() == "size"
    assert gate.requested is None


async def test_a_request_while_the_sink_flushes_is_kept_for_the_next_round() -> None:
    gate = FlushGate(10)
    gate.request("timer")
    assert await gate.next_request() == "timer"
    gate.request("timer")  # arrives during the flush
    assert await asyncio.wait_for(gate.next_request(), 1) == "timer"


async def test_a_batch_past_the_bound_waits_for_room_and_asks_for_it() -> None:
    gate = FlushGate(100)
    gate.added(150)
    assert gate.fits(50) and not gate.fits(51)
    waiter = asyncio.ensure_future(gate.reserve(60))
    await asyncio.sleep(0.01)
    assert not waiter.done() and gate.requested in ("size", "room")
    gate.removed(100)
    await asyncio.wait_for(waiter, 1)
    assert gate.reserved == 60
    gate.added(60, reserved=60)
    assert (gate.buffered, gate.reserved) == (110, 0)


async def test_a_batch_larger_than_the_bound_enters_an_empty_buffer_only() -> None:
    gate = FlushGate(10)
    assert gate.fits(1000)
    await gate.reserve(1000)
    gate.added(1000, reserved=1000)
    assert not gate.fits(1)
    waiter = asyncio.ensure_future(gate.reserve(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.removed(1000)
    await asyncio.wait_for(waiter, 1)


async def test_recount_after_a_restore_asks_for_a_flush_when_full() -> None:
    gate = FlushGate(10)
    gate.recount(25)
    assert gate.buffered == 25 and gate.requested == "size"
    assert not gate.fits(1)


async def test_buffered_rows_never_pass_the_bound_under_many_producers() -> None:
    gate = FlushGate(50)
    peak = 0

    async def producer() -> None:
        nonlocal peak
        for _ in range(40):
            await gate.reserve(7)
            await asyncio.sleep(0)  # processing: others reserve meanwhile
            gate.added(7, reserved=7)
            peak = max(peak, gate.buffered)

    async def sink() -> None:
        while True:
            await gate.next_request()
            await asyncio.sleep(0.001)
            gate.removed(gate.buffered)

    sink_task = asyncio.ensure_future(sink())
    await asyncio.wait_for(asyncio.gather(*(producer() for _ in range(5))), 10)
    sink_task.cancel()
    assert peak <= gate.bound


async def test_room_held_by_batches_in_processing_counts_against_the_bound() -> None:
    """Three agents checking for room at once must not all pass it (this broke the bound in a real run)."""
    gate = FlushGate(50)
    gate.added(90)
    await gate.reserve(5)
    await gate.reserve(5)
    third = asyncio.ensure_future(gate.reserve(5))
    await asyncio.sleep(0.01)
    assert not third.done()
    gate.release(5)  # one batch was abandoned: its room goes back
    await asyncio.wait_for(third, 1)
    assert gate.buffered + gate.reserved == 100 == gate.bound
