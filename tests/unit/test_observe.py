"""The pure parts behind the web views: lag arithmetic and its table, readiness, table summaries, queries."""

from __future__ import annotations

import asyncio

import pytest

from k2.lake.status import TableStatus
from k2.observe.health import Probe, ingest_check, stall_check
from k2.observe.lag import PartitionLag, format_lag_table, lag_payload, merge_marks, partition_lags
from k2.observe.probes import Cached, Check, assignment_check, readiness, recovery_check
from k2.observe.tables import offsets_json, tables_payload
from k2.web.query import parse_query

T = "market.trades.raw"
Q = "market.quotes.raw"


# -- lag --------------------------------------------------------------------------------------------


def test_partition_lags_follow_kafka_offset_conventions() -> None:
    ends = {(T, 1): 100, (T, 0): 40, (Q, 0): 0}
    committed: dict[tuple[str, int], int | None] = {(T, 0): 40, (T, 1): 70, (Q, 0): None}
    landed = {(T, 0): 39, (T, 1): 49}
    rows = partition_lags(ends, committed, landed)
    assert [(r.topic, r.partition) for r in rows] == [(Q, 0), (T, 0), (T, 1)]
    assert rows[1] == PartitionLag(T, 0, 40, 40, 39, consumer_lag=0, lake_lag=0)
    assert rows[2] == PartitionLag(T, 1, 100, 70, 49, consumer_lag=30, lake_lag=50)
    assert rows[0] == PartitionLag(Q, 0, 0, None, None, consumer_lag=0, lake_lag=0)


def test_nothing_committed_or_landed_counts_from_the_start() -> None:
    [row] = partition_lags({(T, 0): 25}, {}, {})
    assert (row.committed_offset, row.lake_offset, row.consumer_lag, row.lake_lag) == (None, None, 25, 25)


def test_merge_marks_only_moves_forward() -> None:
    marks = {(T, 0): 10}
    merge_marks(marks, {(T, 0): 5, (T, 1): 3})
    merge_marks(marks, {(T, 0): 12})
    assert marks == {(T, 0): 12, (T, 1): 3}


def test_lag_payload_has_partitions_and_totals() -> None:
    rows = partition_lags({(T, 0): 10, (T, 1): 5}, {(T, 0): 8}, {(T, 0): 2})
    body = lag_payload(rows)
    assert body["total"] == {"consumer_lag": 2 + 5, "lake_lag": 7 + 5}
    assert body["partitions"][0] == {
        "topic": T,
        "partition": 0,
        "end_offset": 10,
        "committed_offset": 8,
        "lake_offset": 2,
        "consumer_lag": 2,
        "lake_lag": 7,
        "open_transaction": 0,
    }


def test_lag_table_is_aligned_with_a_total() -> None:
    rows = partition_lags({(T, 0): 12345, (T, 11): 7}, {(T, 0): 12000}, {(T, 0): 11999})
    assert format_lag_table(rows) == (
        "topic              partition  end offset  committed  in lake  consumer lag  lake lag\n"
        "-----------------  ---------  ----------  ---------  -------  ------------  --------\n"
        "market.trades.raw          0       12345      12000    11999           345       345\n"
        "market.trades.raw         11           7          -        -             7         7\n"
        "-----------------  ---------  ----------  ---------  -------  ------------  --------\n"
        "total                                                                  352       352\n"
    )


def test_lag_table_widens_for_long_values() -> None:
    rows = partition_lags({("t", 0): 10**12}, {}, {})
    lines = format_lag_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["t", "0", str(10**12), "-", "-", str(10**12), str(10**12)]


def test_lag_table_without_partitions_still_has_its_header() -> None:
    lines = format_lag_table([]).splitlines()
    assert lines[0].split()[0] == "topic" and lines[-1].split() == ["total", "0", "0"]


# -- readiness ----------------------------------------------------------------------------------------


def test_ready_only_when_every_check_passes() -> None:
    ok = [Check("partitions", True, "3"), Check("registry", True, "up")]
    assert readiness(ok)[0] == 200
    status, body = readiness([*ok, Check("catalog", False, "timeout")])
    assert status == 503
    assert body["ready"] is False and body["failed"] == ["catalog"]
    assert body["checks"]["catalog"] == {"ok": False, "detail": "timeout"}


def test_assignment_and_recovery_checks() -> None:
    assert assignment_check(0).ok is False and assignment_check(4).ok is True
    recovering = recovery_check(rebalancing=True, in_recovery=True, completed=True, remaining=42)
    assert not recovering.ok and "42" in recovering.detail
    assert not recovery_check(rebalancing=True, in_recovery=False, completed=True, remaining=0).ok
    assert not recovery_check(rebalancing=False, in_recovery=False, completed=False, remaining=0).ok
    assert recovery_check(rebalancing=False, in_recovery=False, completed=True, remaining=0).ok


async def test_probe_turns_errors_and_timeouts_into_failed_checks() -> None:
    async def fine() -> str:
        return "3 subjects"

    async def broken() -> str:
        raise ConnectionRefusedError("refused")

    assert await Probe("registry", fine).check() == Check("registry", True, "3 subjects")
    failed = await Probe("registry", broken).check()
    assert not failed.ok and "ConnectionRefusedError" in failed.detail


async def test_a_hung_dependency_that_never_answered_fails_without_piling_up_requests() -> None:
    now = [0.0]
    calls = 0
    release = asyncio.Event()

    async def hung() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "back"

    p = Probe("catalog", hung, timeout_s=0.05, ttl_s=5, clock=lambda: now[0])
    first = await p.check()
    assert not first.ok and "no success yet" in first.detail
    now[0] = 3.0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    second = await p.check()  # still running: says for how long, without waiting again
    assert loop.time() - t0 < 0.04
    assert not second.ok and "for 3s" in second.detail and calls == 1
    release.set()
    await asyncio.sleep(0)
    assert (await p.check()).ok and calls == 1
    assert (await p.check()).ok and calls == 1  # a pass is kept for ttl_s


async def test_a_slow_answer_is_not_a_failure_until_nothing_succeeded_for_stale_s() -> None:
    """Readiness flapped under load: one late reply of a healthy broker made the worker look dead."""
    now = [0.0]
    slow = asyncio.Event()
    answers = iter(["fast", "slow"])

    async def ask() -> str:
        answer = next(answers)
        if answer == "slow":
            await slow.wait()
        return answer

    p = Probe("kafka", ask, timeout_s=0.01, ttl_s=5, stale_s=30, clock=lambda: now[0])
    assert (await p.check()).ok  # a success at t=0
    now[0] = 6.0  # past the ttl: asked again, and this time it is slow
    late = await p.check()
    assert late.ok and "fast" in late.detail and "6s ago" in late.detail
    now[0] = 29.0
    assert (await p.check()).ok
    now[0] = 31.0  # nothing succeeded for 31 s: that is evidence
    stale = await p.check()
    assert not stale.ok and "no success for 31s" in stale.detail
    slow.set()
    await asyncio.sleep(0)
    assert (await p.check()).ok


async def test_an_error_fails_at_once_even_after_successes() -> None:
    now = [0.0]
    results: list[str | Exception] = ["ok", ConnectionRefusedError("refused")]

    async def ask() -> str:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    p = Probe("registry", ask, ttl_s=1, clock=lambda: now[0])
    assert (await p.check()).ok
    now[0] = 2.0
    failed = await p.check()
    assert not failed.ok and "ConnectionRefusedError" in failed.detail


def test_ingest_check_names_stopped_waiting_and_overdue_partitions() -> None:
    from faust.types import TP

    from k2.pipeline.lifecycle import PartitionState, Phase

    assert ingest_check({}, {}, {}).ok
    stopped = ingest_check({TP("t", 3): "ValueError: boom"}, {}, {})
    assert not stopped.ok and "t/3 (ValueError: boom)" in stopped.detail
    positioning = PartitionState(Phase.POSITIONING, 4, 0.0, 0.0)
    waiting = ingest_check({}, {TP("t", 1): positioning}, {})
    assert not waiting.ok and "1 partition(s) not consuming yet (1 positioning)" in waiting.detail
    overdue = ingest_check({}, {TP("t", 1): positioning}, {TP("t", 1): "positioning for 31s (2 attempt(s))"})
    assert not overdue.ok and "t/1: positioning for 31s" in overdue.detail


def test_stall_check_fails_only_with_lag_and_no_progress() -> None:
    now = 100.0
    assert stall_check({("t", 0): 0}, {}, 0.0, now, 30).ok  # no lag: idle is fine
    assert stall_check({("t", 0): 5}, {("t", 0): 90.0}, 0.0, now, 30).ok  # taken 10s ago
    stuck = stall_check({("t", 0): 5}, {("t", 0): 60.0}, 0.0, now, 30)
    assert not stuck.ok and "t/0 (5 waiting, nothing taken for 40s)" in stuck.detail
    never = stall_check({("t", 1): 5}, {}, 50.0, now, 30)  # nothing taken since positioned 50s ago
    assert not never.ok
    assert stall_check({("t", 1): 5}, {}, None, now, 30).ok  # not positioned yet: the ingest check says so


async def test_cached_reuses_a_result_for_its_ttl_and_shares_one_load() -> None:
    now = [0.0]
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return loads

    cache = Cached(load, 5.0, clock=lambda: now[0])
    assert await asyncio.gather(cache.get(), cache.get(), cache.get()) == [1, 1, 1]
    now[0] = 4.9
    assert await cache.get() == 1
    now[0] = 5.0
    assert await cache.get() == 2


async def test_cached_does_not_keep_failures() -> None:
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("catalog down")
        return "up"

    cache = Cached(load, 60.0)
    with pytest.raises(OSError):
        await cache.get()
    assert await cache.get() == "up"
    with pytest.raises(ValueError):
        Cached(load, -1)


async def test_cached_keeps_only_what_keep_accepts() -> None:
    answers = iter([Check("catalog", False, "down"), Check("catalog", True, "up"), Check("catalog", False, "x")])

    async def load() -> Check:
        return next(answers)

    cache = Cached(load, 60.0, keep=lambda c: c.ok)
    assert not (await cache.get()).ok  # a failure is not kept...
    assert (await cache.get()).ok  # ...so the recovery shows at once
    assert (await cache.get()).detail == "up"  # and a success is kept for the TTL


# -- tables ------------------------------------------------------------------------------------------


def test_tables_payload_shape() -> None:
    statuses = [
        TableStatus("market_data.trades", True, 77, 1_000_000, 2243, {(T, 4): 1999, (T, 0): 231}),
        TableStatus("market_data.rejects", False),
    ]
    body = tables_payload(statuses, {"market_data.trades": 5}, now_s=1_010.5)
    trades, rejects = body["tables"]
    assert trades == {
        "table": "market_data.trades",
        "exists": True,
        "snapshot_id": 77,
        "committed_at": "1970-01-01T00:16:40.000+00:00",
        "commit_age_seconds": 10.5,
        "rows": 2243,
        "offsets": {T: {"0": 231, "4": 1999}},
        "buffered_rows": 5,
    }
    assert rejects["exists"] is False and rejects["snapshot_id"] is None and rejects["commit_age_seconds"] is None
    assert rejects["buffered_rows"] == 0 and rejects["offsets"] == {}


def test_offsets_json_groups_by_topic() -> None:
    assert offsets_json({(Q, 1): 3, (T, 0): 1, (Q, 0): 2}) == {Q: {"0": 2, "1": 3}, T: {"0": 1}}


# -- query strings -----------------------------------------------------------------------------------


def test_parse_query_accepts_known_parameters() -> None:
    assert parse_query({}, {"format": ("json", "text")}) == {}
    assert parse_query({"format": "text"}, {"format": ("json", "text")}) == {"format": "text"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([("fmt", "text")], "unknown query parameter 'fmt'"),
        ([("format", "xml")], "format='xml' is not one of json, text"),
        ([("format", "json"), ("format", "text")], "more than once"),
    ],
)
def test_parse_query_rejects_bad_parameters(items: list[tuple[str, str]], message: str) -> None:
    class Multi:
        def items(self) -> list[tuple[str, str]]:
            return items

    with pytest.raises(ValueError, match=message):
        parse_query(Multi(), {"format": ("json", "text")})


def test_overview_is_what_the_operator_page_reads() -> None:
    from k2.observe.tables import overview_payload

    ready = {
        "ready": False,
        "failed": ["sink"],
        "checks": {"kafka": {"ok": True, "detail": "fine"}, "sink": {"ok": False, "detail": "x"}},
    }
    lag = {"partitions": [{"topic": "t", "partition": 0}], "total": {}}
    tables = [{"table": "a", "exists": True}, {"table": "b", "exists": False}]
    body = overview_payload("w:1", ready, lag, tables, {("t", "undecodable"): 2.0, ("t", "duplicate"): 0.0})
    assert body["ready"] == {
        "status": "not ready",
        "checks": [{"name": "kafka", "ok": True, "detail": "fine"}, {"name": "sink", "ok": False, "detail": "x"}],
    }
    assert [t["table"] for t in body["tables"]] == ["a"]
    assert body["rejects"] == [{"topic": "t", "reason": "undecodable", "rejects": 2}]
    assert body["lag"] is lag and body["worker_id"] == "w:1"


def test_rejects_by_reason_come_from_the_counter() -> None:
    from prometheus_client import CollectorRegistry

    from k2.metrics import K2Metrics

    metrics = K2Metrics(CollectorRegistry())
    metrics.events_rejected.labels("t", "undecodable").inc(3)
    assert metrics.rejects_by_reason() == {("t", "undecodable"): 3.0}
