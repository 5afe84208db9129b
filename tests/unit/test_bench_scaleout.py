"""bench/scaleout.py and its report: the group settled, metrics and CPU per worker, commits per table, the goal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import scaleout_report  # noqa: E402
from bench.lakecheck import commit_stats  # noqa: E402
from bench.scaleout import (  # noqa: E402
    instruments_for,
    metric_totals,
    per_worker,
    pyiceberg_env,
    replay_plan,
    settled,
)

TOPICS = ("s.trades", "s.quotes")


def _view(*held: tuple[str, int], phase: str = "consuming") -> dict[str, Any]:
    return {"generation": 1, "partitions": [{"topic": t, "partition": p, "phase": phase} for t, p in held]}


def test_settled_needs_every_partition_once_consuming_and_every_worker_busy() -> None:
    a = _view(("s.trades", 0), ("s.quotes", 0), ("s.reference", 0))
    b = _view(("s.trades", 1), ("s.quotes", 1))
    assert settled([a, b], TOPICS, 2)
    assert not settled([a], TOPICS, 2)  # partition 1 of each topic unheld
    assert not settled([a, b, b], TOPICS, 2)  # held twice (a revocation not yet seen)
    assert not settled([a, b, _view()], TOPICS, 2)  # a worker with nothing: the group is still assigning
    assert not settled([a, _view(("s.trades", 1), ("s.quotes", 1), phase="positioning")], TOPICS, 2)


def test_metric_totals_sum_over_labels() -> None:
    text = """\
# HELP k2_flushes_total Flushes.
# TYPE k2_flushes_total counter
k2_flushes_total{table="market_data.trades"} 4.0
k2_flushes_total{table="market_data.quotes"} 5.0
# HELP k2_iceberg_commit_attempts_total Attempts.
# TYPE k2_iceberg_commit_attempts_total counter
k2_iceberg_commit_attempts_total{table="market_data.trades"} 6.0
# HELP k2_iceberg_commit_duration_seconds Commit time.
# TYPE k2_iceberg_commit_duration_seconds histogram
k2_iceberg_commit_duration_seconds_bucket{le="+Inf",table="market_data.trades"} 3.0
k2_iceberg_commit_duration_seconds_count{table="market_data.trades"} 3.0
k2_iceberg_commit_duration_seconds_sum{table="market_data.trades"} 0.9
"""
    totals = metric_totals(text)
    assert totals["k2_flushes_total"] == 9.0 and totals["k2_iceberg_commit_attempts_total"] == 6.0
    assert totals["k2_iceberg_commit_duration_seconds_count"] == 3.0
    assert totals["k2_iceberg_commit_duration_seconds_sum"] == 0.9
    assert totals["k2_events_consumed_total"] == 0.0


def test_per_worker_cpu_is_over_the_events_of_the_window() -> None:
    before = [{"k2_events_consumed_total": 100.0}, {"k2_events_consumed_total": 0.0}]
    after = [{"k2_events_consumed_total": 200_100.0}, {"k2_events_consumed_total": 0.0}]
    out = per_worker([(10.0, 14.0), (3.0, 3.5)], before, after)
    assert out == [
        {"events": 200_000, "cpu_s": 4.0, "cpu_s_per_million": 20.0},
        {"events": 0, "cpu_s": 0.5, "cpu_s_per_million": None},
    ]


def test_commit_stats_count_the_window_per_minute_and_the_committing_workers() -> None:
    def snap(ts: int, worker: str, files: int, operation: str = "append") -> tuple[int, dict[str, str]]:
        return ts, {"operation": operation, "k2.worker-id": worker, "added-data-files": str(files)} | {
            "added-files-size": str(files * 2048)
        }

    snapshots = {
        "t": [
            snap(0, "a", 9),  # before the window
            snap(1_000, "a", 2),
            snap(30_000, "b", 1),
            snap(60_000, "a", 3),
            snap(61_000, "a", 7),  # after
            snap(50_000, "m", 1, "replace"),  # maintenance, not a commit of a worker
        ]
    }
    out = commit_stats(snapshots, 1_000, 61_000 - 1)["t"]
    assert out == {
        "snapshots": 3,
        "snapshots_per_min": 3.0,
        "data_files": 6,
        "data_files_per_min": 6.0,
        "avg_file_kb": 2.0,
        "committing_workers": 2,
    }


def test_catalog_properties_become_pyicebergs_variables() -> None:
    env = pyiceberg_env({"type": "rest", "s3.path-style-access": "true"})
    assert env == {"PYICEBERG_CATALOG__K2__TYPE": "rest", "PYICEBERG_CATALOG__K2__S3__PATH_STYLE_ACCESS": "true"}


def _run(workers: int, p99: float, cpu: float, flush: float = 5.0) -> dict[str, Any]:
    table = {"snapshots_per_min": 12.0 * workers, "data_files_per_min": 30.0 * workers}
    return {
        "workers": workers,
        "flush_interval_s": flush,
        "rate": 500 * workers,
        "loadavg_start": [2.0],
        "machine_busy_cores": 0.5 * workers,
        "rebalances": 0,
        "missing": 0,
        "doubled": 0,
        "tables": {"trades": table, "quotes": table},
        "commits": {"snapshots": 48 * workers, "retries": workers - 1, "failures": 0, "mean_commit_s": 0.1},
        "freshness": {"p50_s": 3.0, "p99_s": p99, "max_s": p99 + 1},
        "cpu": {"s_per_million": cpu, "worker_min_s_per_million": cpu * 0.9, "worker_max_s_per_million": cpu * 1.1},
        "services_cores": {"kafka": 0.2, "rest": 0.1 * workers, "s3": 0.05},
    }


def test_goal_compares_the_most_workers_with_one_per_flush_interval() -> None:
    runs = [_run(1, 5.0, 100), _run(3, 5.5, 110), _run(6, 6.5, 115)]
    runs += [
        _run(1, 1.5, 200, flush=1),
        _run(6, 1.6, 230, flush=1),
        {"workers": 3, "flush_interval_s": 1, "error": "x"},
    ]
    goal = scaleout_report.goal({"runs": runs})
    assert goal == [
        {"flush_interval_s": 1, "workers": 6, "freshness_p99_ratio": 1.07, "cpu_per_event_ratio": 1.15, "met": True},
        {"flush_interval_s": 5.0, "workers": 6, "freshness_p99_ratio": 1.3, "cpu_per_event_ratio": 1.15, "met": False},
    ]


def test_scaleout_table_and_section() -> None:
    results = {
        "date": "2026-01-02",
        "duration_s": 900,
        "machine": {"nproc": 2},
        "config": {"workers": [1, 6], "partitions": 12, "rate_per_worker": 500, "seconds": 120, "warmup_s": 10},
        "runs": [_run(1, 5.0, 100), _run(6, 6.5, 115), {"workers": 3, "flush_interval_s": 5.0, "error": "boom"}],
    }
    text = scaleout_report.table(results)
    six = text.splitlines()[2]
    assert "3,000" in six and "72/72" in six and "180/180" in six and "3.0/6.5/7.5" in six and "115 (104-127)" in six
    assert "0.20/0.60/0.05" in six and " 100 " in text.splitlines()[1]
    assert "error" in text.splitlines()[3]
    section = scaleout_report.section(results)
    assert section.startswith("### Scale-out") and "1, 6 K2 workers" in section
    assert "6 workers against one: freshness p99 1.30x, CPU per event 1.15x" in section
    assert "**not met**" in section and "after the first 10 s" in section


def test_one_pass_of_enough_instruments_lasts_the_run() -> None:
    assert instruments_for(500 * 120) == 13  # 4,852 events per instrument and pass
    assert instruments_for(3000 * 120) == 75
    assert instruments_for(1000) == 12  # never fewer than the partitions want


def test_fixed_instruments_make_up_a_longer_run_with_passes_not_symbols() -> None:
    assert replay_plan(5000 * 180) == (1, 186)  # the default: one pass, symbols grow with the run
    assert replay_plan(5000 * 1800) == (1, 1855)
    assert replay_plan(5000 * 180, 186) == (1, 186)
    assert replay_plan(5000 * 1800, 186) == (10, 186)  # the same symbols, ten passes


def test_fixed_instruments_that_one_pass_would_overrun_the_run_with_are_refused() -> None:
    """Found running it: 1,855 instruments for a 3-minute run made a 30-minute one (a pass is not cut short)."""
    with pytest.raises(ValueError, match=r"at most 185 instruments, or a run 10\.0 times as long"):
        replay_plan(5000 * 180, 1855)


def test_commit_steps_are_what_the_window_added_across_workers_and_tables() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from bench.scaleout import commit_steps
    from k2.metrics import K2Metrics

    workers = [K2Metrics(CollectorRegistry()) for _ in range(2)]

    def commit(m: K2Metrics, table: str, seconds: float, steps: dict[str, float]) -> None:
        m.commit_duration.labels(table).observe(seconds)
        for step, s in steps.items():
            m.commit_steps.labels(table, step).observe(s)

    commit(workers[0], "t", 9.0, {"catalog": 8.0, "write": 1.0})  # before the window: not counted
    before = [generate_latest(m.registry).decode() for m in workers]
    for n in range(99):
        commit(workers[n % 2], "t" if n % 3 else "q", 0.2, {"catalog": 0.15, "write": 0.05})
    commit(workers[1], "q", 3.0, {"catalog": 2.95, "write": 0.05})
    after = [generate_latest(m.registry).decode() for m in workers]

    out = commit_steps(before, after)
    assert out["steps_ms"] == {"catalog": round((99 * 0.15 + 2.95) / 100 * 1000, 1), "write": 50.0}
    assert out["commit_p99_le_s"] == 0.25  # 99 of the window's 100 commits at or below the 0.25 s bucket
    assert out["oldest_event"] == {"age_mean_s": None, "age_p99_le_s": None, "wait_mean_s": None, "wait_p99_le_s": None}
    commit(workers[0], "t", 3.0, {"catalog": 3.0})
    for n in range(100):  # the freshness of each commit: the oldest event's age, and its wait in the worker
        workers[n % 2].commit_event_age.labels("t").observe(1.2 if n < 98 else 4.0)
        workers[n % 2].commit_event_wait.labels("t").observe(0.6)
    later = [generate_latest(m.registry).decode() for m in workers]
    out = commit_steps(before, later)
    assert out["commit_p99_le_s"] == 5.0  # 2 of 101 slow: the p99 is in their bucket
    assert out["oldest_event"] == {"age_mean_s": 1.256, "age_p99_le_s": 5.0, "wait_mean_s": 0.6, "wait_p99_le_s": 0.75}
    assert commit_steps(after, after)["steps_ms"] == {} and commit_steps(after, after)["commit_p99_le_s"] is None
