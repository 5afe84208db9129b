"""Positioning under rebalances: a fake consumer that refuses seeks for partitions it does not hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from aiokafka.errors import IllegalStateError
from faust.types import TP
from prometheus_client import CollectorRegistry

from k2.lake.writer import LakeRegressed
from k2.metrics import K2Metrics
from k2.pipeline.lifecycle import Lifecycle
from k2.pipeline.positioning import PartitionsStuck, Positioner, Starts

T0, T1, T4 = TP("trades", 0), TP("trades", 1), TP("trades", 4)


class FakeConsumer:
    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.sought: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.resumed: set[TP] = set()
        self.committed: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        self.resumed |= set(tps)

    async def seek(self, partition: TP, offset: int) -> None:
        if partition not in self.assigned:  # as aiokafka's SubscriptionState does
            raise IllegalStateError(f"No current assignment for partition {partition}")
        self.sought[partition] = offset

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: 0 for tp in partitions}

    def committed_offsets(self) -> dict[TP, int | None]:
        return dict(self.committed)


class FakeStore:
    def chunk_keys(self, partitions: set[int] | None = None) -> list[Any]:
        return []

    async def remove(self, keys: Any) -> list[Any]:
        return []


def make(
    consumer: FakeConsumer, marks: dict[tuple[str, int], int] | None = None, **kw: Any
) -> tuple[Positioner, Lifecycle, list[tuple[Starts, set[TP]]], asyncio.Event]:
    lc = Lifecycle()
    ready = asyncio.Event()
    ready.set()
    done: list[tuple[Starts, set[TP]]] = []

    async def read_marks() -> dict[tuple[str, int], int]:
        return dict(marks or {})

    options: dict[str, Any] = {"timeout_s": 10.0, "position_bound_s": 30.0, "stuck_exit_s": 120.0, **kw}
    p = Positioner(
        lc,
        lambda: consumer,
        read_marks,
        ready,
        lambda: None,
        {"trades": FakeStore()},  # type: ignore[dict-item]
        all_ready,
        K2Metrics(CollectorRegistry()),
        **options,
    )
    p.on_positioned = lambda starts, tps: done.append((starts, set(tps)))
    return p, lc, done, ready


async def all_ready(tps: set[TP]) -> set[TP]:
    return set(tps)


async def run_until(p: Positioner, condition: Any, timeout_s: float = 30.0) -> None:
    stop = False
    task = asyncio.ensure_future(p.run(lambda: stop, tick_s=0.01))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            if task.done():
                task.result()
            assert loop.time() < deadline, "condition not reached"
            await asyncio.sleep(0.01)
    finally:
        stop = True
        p.wake()
        await asyncio.wait([task], timeout=1)


async def test_partitions_start_after_the_lake_marks_and_consume() -> None:
    consumer = FakeConsumer({T0, T1})
    p, lc, done, _ = make(consumer, marks={("trades", 0): 41})
    lc.assigned({T0, T1}, 1)
    lc.restored(1)
    lc.sought({T0: None, T1: None})
    await run_until(p, lambda: lc.consuming_set() == {T0, T1})
    assert consumer.sought == {T0: 42, T1: 0}  # after the mark; from the log start when none
    assert consumer.resumed == {T0, T1}
    assert done[0][0].starts == {T0: 42, T1: 0}


async def test_a_partition_the_consumer_no_longer_holds_does_not_stop_the_others() -> None:
    """The join stall: one seek raised "No current assignment", the positioning task died unseen, and the
    partitions really assigned were never consumed."""
    consumer = FakeConsumer({T4})
    p, lc, _, _ = make(consumer, marks={("trades", 0): 2, ("trades", 4): 4})
    lc.assigned({T0, T4}, 7)  # the consumer already lost T0 (its revocation is on the way)
    lc.restored(7)
    lc.sought({T0: 3, T4: 5})
    await run_until(p, lambda: lc.is_consuming(T4))
    assert consumer.sought == {T4: 5} and consumer.resumed == {T4}
    assert not lc.is_consuming(T0)


async def test_a_failing_attempt_is_logged_and_retried_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer({T0})
    p, lc, _, _ = make(consumer)
    failures = [RuntimeError("boom")]
    real = consumer.earliest_offsets

    async def flaky(*tps: TP) -> Mapping[TP, int]:
        if failures:
            raise failures.pop()
        return await real(*tps)

    consumer.earliest_offsets = flaky  # type: ignore[method-assign]
    lc.assigned({T0}, 1)
    lc.restored(1)
    lc.sought({T0: 0})
    await run_until(p, lambda: lc.is_consuming(T0))
    assert "positioning 1 partition(s) failed" in caplog.text and "RuntimeError: boom" in caplog.text


async def test_an_unavailable_catalog_is_a_named_outside_cause() -> None:
    consumer = FakeConsumer({T0})
    p, lc, _, _ = make(consumer, position_bound_s=0.05, stuck_exit_s=0.1)
    calls = 0

    async def down() -> dict[tuple[str, int], int]:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("catalog down")

    p._read_marks = down
    lc.assigned({T0}, 1)
    lc.restored(1)
    lc.sought({T0: 0})
    await run_until(p, lambda: calls >= 2 and bool(p.overdue))
    state = lc.state(T0)
    assert state is not None and state.waiting_for is not None and "catalog down" in state.waiting_for
    assert "catalog down" in p.overdue[T0]  # readiness names it; no exit: the cause is outside K2


async def test_stuck_for_no_outside_reason_ends_the_worker() -> None:
    consumer = FakeConsumer({T0})
    p, lc, _, _ = make(consumer, position_bound_s=0.02, stuck_exit_s=0.05)

    async def broken(*tps: TP) -> Mapping[TP, int]:
        raise RuntimeError("a bug")

    consumer.earliest_offsets = broken  # type: ignore[method-assign]
    lc.assigned({T0}, 1)
    lc.restored(1)
    lc.sought({T0: 0})
    with pytest.raises(PartitionsStuck, match="trades/0"):
        await asyncio.wait_for(p.run(lambda: False, tick_s=0.01), 30)


async def test_restored_but_never_sought_is_positioned_from_the_committed_offset() -> None:
    consumer = FakeConsumer({T0})
    consumer.committed = {T0: 17}
    p, lc, _, _ = make(consumer, marks={("trades", 0): 16}, position_bound_s=0.03)
    lc.assigned({T0}, 1)
    lc.restored(1)  # and faust's seek never reached K2
    await run_until(p, lambda: lc.is_consuming(T0))
    assert consumer.sought == {T0: 17}


async def test_a_revocation_cancels_the_attempt_and_nothing_is_resumed() -> None:
    consumer = FakeConsumer({T0})
    p, lc, _, _ = make(consumer)
    gate = asyncio.Event()

    async def slow() -> dict[tuple[str, int], int]:
        await gate.wait()
        return {}

    p._read_marks = slow
    lc.assigned({T0}, 1)
    lc.restored(1)
    lc.sought({T0: 0})
    stop = False
    task = asyncio.ensure_future(p.run(lambda: stop, tick_s=0.01))
    await asyncio.sleep(0.05)
    lc.revoking({T0})
    p.cancel()
    gate.set()
    await asyncio.sleep(0.05)
    stop = True
    p.wake()
    await asyncio.wait_for(task, 1)
    assert consumer.resumed == set() and consumer.sought == {} and not lc.is_consuming(T0)


async def test_partitions_without_their_table_partitions_wait_with_a_reason() -> None:
    consumer = FakeConsumer({T0, T4})
    p, lc, _, _ = make(consumer)

    async def apart(tps: set[TP]) -> set[TP]:
        return tps - {T4}  # a topic grew: trades/4's changelog partitions are elsewhere

    p._tables_ready = apart
    lc.assigned({T0, T4}, 1)
    lc.restored(1)
    lc.sought({T0: 0, T4: 0})
    await run_until(p, lambda: lc.is_consuming(T0))
    state = lc.state(T4)
    assert state is not None and not lc.is_consuming(T4)
    assert state.waiting_for is not None and "table partitions" in state.waiting_for


async def test_a_lake_that_went_back_sets_a_floor() -> None:
    consumer = FakeConsumer({T0})
    p, lc, _, _ = make(consumer)

    async def regressed() -> dict[tuple[str, int], int]:
        exc = LakeRegressed({"market_data.trades": {("trades", 0): (90, 9)}})
        exc.marks = {("trades", 0): 9}
        raise exc

    p._read_marks = regressed
    p.on_regressed = lambda exc, tps: p.floors.update({TP(t, q): s for (t, q), s in exc.starts.items()})
    lc.assigned({T0}, 1)
    lc.restored(1)
    lc.sought({T0: 91})
    await run_until(p, lambda: lc.is_consuming(T0))
    assert consumer.sought == {T0: 10}
