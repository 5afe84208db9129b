"""The ledger: which batches are taken, when a partition's offsets may be committed, fail-closed stops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from faust.types import TP

from k2.pipeline.ledger import Ledger, Verdict

P0 = TP("t", 0)
P1 = TP("t", 1)


@dataclass(frozen=True)
class Rec:
    offset: int


def recs(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


def future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def test_a_batch_is_taken_only_where_the_last_one_ended() -> None:
    ledger = Ledger()
    ledger.reset({P0: 10})
    first = ledger.admit(P0, 10, 13, recs(10, 11, 12), generation=None)
    assert first.verdict is Verdict.ACCEPT and [r.offset for r in first.records] == [10, 11, 12]
    # The log may skip offsets (markers, compaction): positions, not offsets, say what follows.
    second = ledger.admit(P0, 13, 20, recs(15, 19), generation=None)
    assert second.verdict is Verdict.ACCEPT
    gap = ledger.admit(P0, 25, 30, recs(25), generation=None)
    assert gap.verdict is Verdict.DISCONTINUITY and gap.expected == 20
    assert ledger.refused_once(P0)
    assert not ledger.refused_once(P0) or ledger.admit(P0, 26, 27, recs(26), None).verdict is Verdict.DISCONTINUITY
    assert not ledger.refused_once(P0)  # a second refusal of the same discontinuity does not seek again


def test_a_refetched_head_is_cut_and_a_stale_batch_ignored() -> None:
    ledger = Ledger()
    ledger.reset({P0: 0})
    ledger.admit(P0, 0, 5, recs(0, 1, 2, 3, 4), None)
    overlap = ledger.admit(P0, 3, 8, recs(3, 4, 5, 6, 7), None)
    assert overlap.verdict is Verdict.ACCEPT and [r.offset for r in overlap.records] == [5, 6, 7]
    assert ledger.admit(P0, 2, 8, recs(2, 7), None).verdict is Verdict.STALE


def test_an_older_generation_is_stale() -> None:
    ledger = Ledger()
    ledger.generation = 7
    ledger.reset({P0: 0})
    assert ledger.admit(P0, 0, 1, recs(0), generation=6).verdict is Verdict.STALE
    assert ledger.admit(P0, 0, 1, recs(0), generation=7).verdict is Verdict.ACCEPT


def test_an_unknown_start_takes_the_first_batch_as_given() -> None:
    ledger = Ledger()
    ledger.reset({P0: None})
    assert ledger.frontier(P0) is None
    assert ledger.admit(P0, 40, 42, recs(40, 41), None).verdict is Verdict.ACCEPT
    assert ledger.frontier(P0) == 40


async def test_the_frontier_moves_only_when_every_earlier_batch_is_durable() -> None:
    ledger = Ledger()
    ledger.reset({P0: 0})
    a, b1, b2 = future(), future(), future()
    ledger.admit(P0, 0, 10, recs(*range(10)), None)
    ledger.track(P0, 10, [a])
    ledger.admit(P0, 10, 20, recs(*range(10, 20)), None)
    ledger.track(P0, 20, [b1, b2])
    assert ledger.frontier(P0) == 0 and ledger.in_flight() == 2
    b1.set_result(None)
    b2.set_result(None)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert ledger.frontier(P0) == 0  # the second batch is durable, the first is not: nothing moves
    a.set_result(None)
    await asyncio.sleep(0)
    assert ledger.frontier(P0) == 20 and ledger.in_flight() == 0


async def test_a_failed_write_stops_the_partition_before_the_batch() -> None:
    ledger = Ledger()
    ledger.reset({P0: 0, P1: 0})
    ok, bad, later = future(), future(), future()
    ledger.admit(P0, 0, 5, recs(*range(5)), None)
    ledger.track(P0, 5, [ok])
    ledger.admit(P0, 5, 9, recs(*range(5, 9)), None)
    ledger.track(P0, 9, [bad])
    ledger.admit(P0, 9, 12, recs(9, 10, 11), None)
    ledger.track(P0, 12, [later])
    ok.set_result(None)
    later.set_result(None)
    bad.set_exception(RuntimeError("MessageSizeTooLargeError"))
    await asyncio.sleep(0)
    assert ledger.frontier(P0) == 5
    assert "MessageSizeTooLargeError" in ledger.stopped()[P0]
    assert ledger.admit(P0, 12, 13, recs(12), None).verdict is Verdict.STOPPED
    assert ledger.admit(P1, 0, 1, recs(0), None).verdict is Verdict.ACCEPT  # other partitions go on
    assert ledger.in_flight() == 0


async def test_a_stop_on_error_keeps_the_frontier_and_forget_clears_it() -> None:
    ledger = Ledger()
    ledger.reset({P0: 3})
    ledger.stop(P0, "ValueError: boom")
    assert ledger.frontier(P0) == 3 and ledger.stopped() == {P0: "ValueError: boom"}
    ledger.forget([P0])
    assert ledger.stopped() == {} and ledger.frontier(P0) is None


async def test_writes_acked_after_a_revocation_change_nothing() -> None:
    ledger = Ledger()
    ledger.reset({P0: 0})
    fut = future()
    ledger.admit(P0, 0, 4, recs(0, 1, 2, 3), None)
    ledger.track(P0, 4, [fut])
    ledger.forget([P0])
    ledger.reset({P0: 0})  # taken again, from the committed offset
    fut.set_result(None)
    await asyncio.sleep(0)
    assert ledger.frontier(P0) == 0


async def test_wait_durable_returns_when_written_or_on_timeout() -> None:
    ledger = Ledger()
    ledger.reset({P0: 0})
    fut = future()
    ledger.admit(P0, 0, 1, recs(0), None)
    ledger.track(P0, 1, [fut])
    assert not await ledger.wait_durable([P0], timeout_s=0.05)
    asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
    assert await ledger.wait_durable([P0], timeout_s=5)
    assert ledger.frontier(P0) == 1


async def test_capacity_bounds_batches_in_flight() -> None:
    ledger = Ledger(max_pending=2)
    ledger.reset({P0: 0})
    futs = [future(), future()]
    for i, fut in enumerate(futs):
        ledger.admit(P0, i, i + 1, recs(i), None)
        ledger.track(P0, i + 1, [fut])
    waiter = asyncio.ensure_future(ledger.wait_capacity())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    futs[0].set_result(None)
    await asyncio.wait_for(waiter, 1)


@pytest.mark.parametrize("cancel", [True, False])
async def test_a_cancelled_write_is_a_failure(cancel: bool) -> None:
    ledger = Ledger()
    ledger.reset({P0: 0})
    fut = future()
    ledger.admit(P0, 0, 1, recs(0), None)
    ledger.track(P0, 1, [fut])
    if cancel:
        fut.cancel()
    else:
        fut.set_exception(OSError("broker gone"))
    await asyncio.sleep(0)
    assert P0 in ledger.stopped() and ledger.frontier(P0) == 0
