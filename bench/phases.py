"""The phases ``bench/compare.py`` runs a system through: a throughput run, a kill -9 run, a freshness run.

1. :func:`throughput`: over topics loaded before the clock starts, with its own consumer group
   from the earliest offset: events/s from process start and steady (from its first commit or
   count) until every event is landed or counted; CPU s per million events and peak RSS of all
   its processes (/proc); for the lake systems the data files, and the missing and doubled
   (topic, partition, offset) read back from the lake's lineage columns.
2. :func:`kill_run`: the same load, kill -9 at a share of it, restart at once, the same check.
3. :func:`fresh_run`: fresh topics, the system started and ready, then ``k2 replay --rate R``;
   produced (Kafka CreateTime) -> visible (commit time of the snapshot that added the row's
   data file), p50 and p99.
"""

from __future__ import annotations

import time
from typing import Any

from bench.lakecheck import SnapshotTimes, commit_stats, exactness, file_stats, freshness, produced_times
from bench.loading import end_offsets, loader_env, passes_for, replay_args
from bench.procs import wait_until
from bench.runners import System, k2_command

__all__ = ["fresh_run", "kill_run", "throughput", "wait_landed"]

POLL_S = 1.0  # how often the driver looks: it shares the two cores with the system it measures


def wait_landed(system: System, what: str, timeout_s: float) -> float:
    """Until every event of ``system.ends`` is landed (exactly: ``complete()``); the time it was seen."""
    return wait_until(
        f"{system.name}: all {system.total:,} {what}",
        lambda: system.progress() >= system.total and system.complete(),
        timeout_s,
        alive=[system.check],
        meter=system.meter,
        progress=lambda: f"{system.progress():,} of {system.total:,}",
        poll_s=POLL_S,
    )


def throughput(system: System, timeout_s: float) -> dict[str, Any]:
    """Start, wait until every event is landed (or counted), measure, stop."""
    system.prepare()
    start = time.time()
    system.start()
    first: list[tuple[float, int]] = []

    def done() -> bool:
        landed = system.progress()
        if landed and not first:
            first.append((time.time(), landed))
        return landed >= system.total and system.complete()

    finished = wait_until(
        f"{system.name}: all {system.total:,} events",
        done,
        timeout_s,
        alive=[system.check],
        meter=system.meter,
        progress=lambda: f"{system.progress():,} of {system.total:,}",
        poll_s=POLL_S,
    )
    system.meter.sample()
    system.stop()
    own_first, own_done = system.first_mark(), system.done_time()
    if own_first is not None:
        first[:] = [own_first]
    finished = own_done or finished
    first_at, first_n = first[0] if first else (finished, 0)
    total = system.total
    elapsed = max(1e-9, finished - start)
    steady_from_start = total - first_n < 0.1 * total or finished - first_at < 1.0
    steady = round(total / elapsed if steady_from_start else (total - first_n) / (finished - first_at))
    out: dict[str, Any] = {
        "events": total,
        "seconds": round(finished - start, 2),
        "first_commit_s": round(first_at - start, 2),
        "events_per_s": round(total / elapsed),
        "steady_events_per_s": steady,
        # A load so small that the first commit (count) held nearly all of it has no steady part:
        # the rate from start stands in, and this says so.
        "steady_is_from_start": steady_from_start,
        "cpu_s": round(system.meter.cpu_s, 2),
        "cpu_s_per_million": round(system.meter.cpu_s / total * 1e6, 2),
        "rss_max_mib": round(system.meter.rss_max_mib, 1),
        "rss_sum_mib": round(system.meter.rss_sum_mib, 1),
        "processes": system.meter.processes,
    }
    if system.lake:
        out |= file_stats(system.catalog(), system.tables())
        out |= exactness(system.catalog(), system.lineages(), system.ends)
    return out


def kill_run(system: System, kill_at: float, timeout_s: float) -> dict[str, Any]:
    """Start, kill -9 once ``kill_at`` of the load is landed, restart at once, wait to the end, check."""
    system.prepare()
    system.start()
    target = int(system.total * kill_at)
    wait_until(
        f"{system.name}: {target:,} events before the kill",
        lambda: system.progress() >= target,
        timeout_s,
        alive=[system.check],
        progress=lambda: f"{system.progress():,} of {system.total:,}",
        poll_s=POLL_S,
    )
    at_kill = system.progress()
    system.kill()
    restarted = time.time()
    system.start()
    done = wait_landed(system, "events after the restart", timeout_s)
    time.sleep(system.flush_interval_s + 2)  # a late commit would bring its duplicates now
    system.stop()
    verdict = exactness(system.catalog(), system.lineages(), system.ends)
    # A kill after everything landed (a load the first commit held whole) tests nothing: said so.
    return {
        "landed_at_kill": at_kill,
        "killed_mid_load": at_kill < system.total,
        "recovered_s": round(done - restarted, 1),
    } | verdict


def fresh_run(
    system: System, rate: float, seconds: float, warmup_s: float, instruments: int, timeout_s: float
) -> dict[str, Any]:
    """Live production at ``rate`` into fresh (empty) topics the running system reads: produced -> visible."""
    source = system.source
    k2_command(["init"], loader_env(source, system.workdir / "load"), timeout_s=300)
    system.prepare()
    system.meter.sample()
    cpu_before = system.meter.cpu_s  # of this system's earlier runs, if any
    system.start()
    wait_until(f"{system.name} ready on empty topics", system.ready, 240, alive=[system.check])
    time.sleep(3)
    since_ms = int((time.time() + warmup_s) * 1000)
    passes = passes_for(rate * seconds, instruments)
    replay = [*replay_args(passes, instruments), "--rate", f"{rate:g}"]
    market = [lineage for lineage in system.lineages() if lineage.topic_column is None]  # not K2's rejects
    with SnapshotTimes(system.catalog(), [lineage.table for lineage in market]) as times:
        k2_command(replay, loader_env(source, system.workdir / "load"), timeout_s=seconds * 4 + 120)
        system.ends = end_offsets(source)
        wait_landed(system, "live events", timeout_s)
    ended_ms = int(time.time() * 1000)
    system.meter.sample()
    cpu_s = system.meter.cpu_s - cpu_before  # its start-up included: a few seconds in a long run
    system.stop()
    produced = produced_times(source.broker, system.ends)
    catalog = system.catalog()
    # Made per table per hour of the run (every snapshot seen while it ran, expired since or not), and what
    # the run left at its end (expiry and maintenance may have run).
    made = commit_stats({t: list(seen.values()) for t, seen in times.summaries.items()}, since_ms, ended_ms)
    per_hour = {}
    for lineage in market:
        left = file_stats(catalog, [lineage.table])
        per_hour[lineage.table] = {
            "snapshots": round(made[lineage.table]["snapshots_per_min"] * 60),
            "data_files": round(made[lineage.table]["data_files_per_min"] * 60),
            "snapshots_left": left["snapshots"],
            "data_files_left": left["data_files"],
        }
    return {
        "rate": rate,
        "events": system.total,
        "warmup_s": warmup_s,
        "per_hour": per_hour,
        "cpu_s": round(cpu_s, 1),
        "cpu_s_per_million": round(cpu_s / max(1, system.total) * 1e6, 1),
    } | freshness(catalog, market, produced, since_ms, known=times.commit_ms)
