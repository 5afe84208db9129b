#!/usr/bin/env python3
"""Measure Iceberg's Kafka Connect sink on K2's data: throughput, CPU, memory, files; then a kill -9.

Loads the bundled sample, looped to about N events, into fresh topics with `k2 replay`
(Confluent-framed Avro, as K2 reads it), then runs two rounds of bench/systems/connect.py's
ConnectSystem, each with its own consumer group, control topic and tables:

1. throughput: from the JVM's start until every event is in the tables (the snapshot
   summaries' row counts), events/s overall and after the first commit (steady), the JVM's
   CPU seconds per million events (/proc/PID/stat), its peak RSS (VmHWM), the data files
   written and their average size, and a check that every (partition, offset) is one row;
2. kill -9: SIGKILL the JVM once part of the events landed, start it again, wait until
   every offset is in the tables, let it commit a while longer, and count the rows per
   (partition, offset): missing and duplicated events.

    cd /work/wt-connect && PYTHONPATH=. .venv/bin/python bench/systems/try_connect.py --events 500000

Needs the local stack (`deploy/local/stack.py up`); the broker and registry are
K2_KAFKA_BOOTSTRAP_SERVERS / K2_SCHEMA_REGISTRY_URL, or 127.0.0.1 on K2_KAFKA_PORT /
K2_REGISTRY_PORT. Everything it writes is under var/bench/connect/runs/<run>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.systems.connect import (  # noqa: E402
    DEFAULT_CACHE,
    ConnectError,
    ConnectSystem,
    k2_topics,
    proc_cpu_seconds,
    proc_peak_rss_mib,
)
from k2.admin.watermarks import end_offsets  # noqa: E402
from k2.settings import Settings  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_LOOP = 2243 + 2609  # trades + quotes in data/sample (reference data is sent once)
POLL_S = 1.0


def services() -> tuple[str, str]:
    """Broker and registry URL: K2's own variables, else the stack's ports on 127.0.0.1."""
    broker = os.environ.get("K2_KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('K2_KAFKA_PORT', '9092')}"
    registry = (
        os.environ.get("K2_SCHEMA_REGISTRY_URL")
        or f"http://127.0.0.1:{os.environ.get('K2_REGISTRY_PORT', '8081')}/apis/ccompat/v7"
    )
    return broker, registry


def load(run: str, events: int, broker: str, registry: str, var: Path) -> tuple[dict[str, str], dict[Any, int]]:
    """Fresh topics holding about ``events`` events; their topic -> table map and end offsets."""
    loops = max(1, math.ceil(events / EVENTS_PER_LOOP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")} | {
        "K2_KAFKA_BOOTSTRAP_SERVERS": broker,
        "K2_SCHEMA_REGISTRY_URL": registry,
        "K2_TRADES_TOPIC": f"bench{run}.trades",
        "K2_QUOTES_TOPIC": f"bench{run}.quotes",
        "K2_REFERENCE_TOPIC": f"bench{run}.reference",
        "K2_REJECTS_TOPIC": f"bench{run}.rejects",
        "K2_VAR_DIR": str(var / "k2"),
    }
    subprocess.run([str(BIN / "k2"), "init"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
    t = time.perf_counter()
    subprocess.run(
        [str(BIN / "k2"), "replay", str(SAMPLE), "--loop", str(loops), "--no-progress"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=1800,
    )
    replay_s = time.perf_counter() - t
    topics = k2_topics(env["K2_TRADES_TOPIC"], env["K2_QUOTES_TOPIC"])
    ends = end_offsets(Settings(kafka_bootstrap_servers=broker), topics)
    total = sum(ends.values())
    print(f"loaded     {total:,} events ({loops} loops of data/sample) in {replay_s:.1f}s ({total / replay_s:,.0f}/s)")
    return topics, ends


def wait_for(what: str, done: Callable[[], bool], timeout_s: float, system: ConnectSystem) -> None:
    """Poll ``done`` every POLL_S until true; fail clearly on timeout, a failed task or a dead JVM."""
    start = time.monotonic()
    while not done():
        system.check()
        if time.monotonic() - start > timeout_s:
            raise ConnectError(f"timed out after {timeout_s:.0f}s waiting for {what}; see {system.log_path}")
        time.sleep(POLL_S)


def judge(system: ConnectSystem, ends: dict[Any, int]) -> dict[str, int]:
    """Rows per (partition, offset) against Kafka: each offset below the end must be exactly one row."""
    missing = duplicated = extra = rows = 0
    for topic, table in system.topics.items():
        positions = system.positions(table)
        rows += positions.num_rows
        counts = positions.group_by(["kafka_partition", "kafka_offset"]).aggregate([([], "count_all")])
        duplicated += int(pc.sum(pc.subtract(counts["count_all"], 1)).as_py() or 0)
        for (t, partition), end in ends.items():
            if t != topic:
                continue
            mine = counts.filter(pc.equal(counts["kafka_partition"], partition))["kafka_offset"]
            in_range = pc.and_(pc.greater_equal(mine, 0), pc.less(mine, end))
            distinct = int(pc.sum(in_range).as_py() or 0)
            missing += end - distinct
            extra += len(mine) - distinct
    return {"rows": rows, "missing": missing, "duplicated": duplicated, "outside_kafka": extra}


def distinct_positions(system: ConnectSystem) -> int:
    return sum(
        system.positions(t).group_by(["kafka_partition", "kafka_offset"]).aggregate([]).num_rows for t in system.tables
    )


def throughput(args: argparse.Namespace, topics: dict[str, str], ends: dict[Any, int], base: Path) -> dict[str, Any]:
    broker, registry = services()
    total = sum(ends.values())
    system = ConnectSystem(
        broker,
        registry,
        topics,
        base / "throughput",
        commit_interval_s=args.commit_interval,
        group_id=f"bench-connect-{base.name}-a",
        tasks=args.tasks,
        heap_mb=args.heap_mb,
        partitioned=not args.unpartitioned,
        cache=args.cache,
    )
    system.prepare()
    start = time.monotonic()
    system.start()
    try:
        running_s = system.wait_running()
        first: tuple[float, int] | None = None
        landed = 0
        while landed < total:
            system.check()
            if time.monotonic() - start > args.timeout:
                raise ConnectError(f"timeout: {landed:,} of {total:,} landed after {args.timeout:.0f}s")
            landed = sum(system.landed_rows().values())
            if landed and first is None:
                first = (time.monotonic(), landed)
            if landed < total:
                time.sleep(POLL_S)
        elapsed = time.monotonic() - start
        pid = system.pids()[0]
        cpu_s, rss = proc_cpu_seconds(pid), proc_peak_rss_mib(pid)
    finally:
        system.stop()
    assert first is not None
    summaries = system.summaries()
    files = sum(int(s.get("total-data-files", 0)) for s in summaries.values())
    size = sum(int(s.get("total-files-size", 0)) for s in summaries.values())
    snapshots = sum(len(system.catalog().load_table(t).snapshots()) for t in system.tables)
    verdict = judge(system, ends)
    steady = (total - first[1]) / max(1e-9, elapsed - (first[0] - start))
    out = {
        "events": total,
        "running_s": running_s,
        "first_commit_s": first[0] - start,
        "elapsed_s": elapsed,
        "events_per_s": total / elapsed,
        "steady_events_per_s": steady,
        "cpu_s": cpu_s,
        "cpu_s_per_million": cpu_s / total * 1e6,
        "peak_rss_mib": rss,
        "data_files": files,
        "data_bytes": size,
        "avg_file_kib": size / max(1, files) / 1024,
        "snapshots": snapshots,
        **verdict,
    }
    print(f"running    connector RUNNING {running_s:.1f}s after start, first commit at {out['first_commit_s']:.1f}s")
    print(f"landed     {total:,} events in {elapsed:.1f}s from start: {out['events_per_s']:,.0f} events/s")
    print(f"steady     {steady:,.0f} events/s after the first commit")
    print(f"cpu        {cpu_s:.1f} JVM CPU s = {out['cpu_s_per_million']:.1f} CPU s per million events")
    print(f"memory     JVM peak RSS {rss:,.0f} MiB (-Xmx{args.heap_mb}m)")
    print(
        f"files      {files:,} data files, {size / 2**20:,.1f} MiB, {out['avg_file_kib']:,.1f} KiB on average; "
        f"{snapshots} snapshots"
    )
    print(f"exactness  rows {verdict['rows']:,}: missing {verdict['missing']:,}, duplicated {verdict['duplicated']:,}")
    return out


def kill_test(args: argparse.Namespace, topics: dict[str, str], ends: dict[Any, int], base: Path) -> dict[str, Any]:
    broker, registry = services()
    total = sum(ends.values())
    system = ConnectSystem(
        broker,
        registry,
        topics,
        base / "kill",
        commit_interval_s=args.commit_interval,
        group_id=f"bench-connect-{base.name}-b",
        tasks=args.tasks,
        heap_mb=args.heap_mb,
        partitioned=not args.unpartitioned,
        cache=args.cache,
    )
    system.prepare()
    system.start()
    try:
        system.wait_running()
        target = int(total * args.kill_at)
        wait_for(
            f"{target:,} rows before the kill",
            lambda: sum(system.landed_rows().values()) >= target,
            args.timeout,
            system,
        )
        # Kill between commits, not right after one: half an interval later the task holds open files.
        time.sleep(args.commit_interval / 2)
        at_kill = sum(system.landed_rows().values())
        system.kill()
        note = "" if at_kill < total else " (all of them: the kill tests nothing; give more --events)"
        print(f"kill -9    at {at_kill:,} of {total:,} rows landed{note}")
        restart = time.monotonic()
        system.start()
        system.wait_running()

        def complete() -> bool:
            return sum(system.landed_rows().values()) >= total and distinct_positions(system) >= total

        wait_for("every offset after the restart", complete, args.timeout, system)
        recovered_s = time.monotonic() - restart
        # Late duplicates would come with the next commits: let a few more happen.
        time.sleep(3 * args.commit_interval)
    finally:
        system.stop()
    verdict = judge(system, ends)
    print(
        f"restart    every offset landed {recovered_s:.1f}s after the restart; rows {verdict['rows']:,} "
        f"for {total:,} events: missing {verdict['missing']:,}, duplicated {verdict['duplicated']:,}"
    )
    return {"landed_at_kill": at_kill, "recovered_s": recovered_s, **verdict}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000, help="about how many events (default 500,000)")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="sink commit interval, s (K2 flushes: 5)")
    parser.add_argument("--tasks", type=int, default=1, help="tasks.max (default 1, like one K2 worker)")
    parser.add_argument("--heap-mb", type=int, default=2048, help="the JVM's -Xmx (default 2048)")
    parser.add_argument("--unpartitioned", action="store_true", help="tables without K2's day partitions")
    parser.add_argument("--kill-at", type=float, default=0.4, help="kill once this share has landed (default 0.4)")
    parser.add_argument("--skip-kill", action="store_true", help="only the throughput round")
    parser.add_argument("--timeout", type=float, default=1800, help="bound of every wait, s")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the jars are kept")
    parser.add_argument("--reuse-topics", metavar="RUN", help="read the topics an earlier run loaded (bench<RUN>.*)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (tables, logs)")
    args = parser.parse_args()

    broker, registry = services()
    run = uuid.uuid4().hex[:8]
    base = ROOT / "var" / "bench" / "connect" / "runs" / run
    base.mkdir(parents=True)
    print(f"run        {run}: broker {broker}, registry {registry}, commit interval {args.commit_interval:g}s")
    try:
        if args.reuse_topics:
            topics = k2_topics(f"bench{args.reuse_topics}.trades", f"bench{args.reuse_topics}.quotes")
            ends = end_offsets(Settings(kafka_bootstrap_servers=broker), topics)
            print(f"reused     {sum(ends.values()):,} events in the topics of run {args.reuse_topics}")
        else:
            topics, ends = load(run, args.events, broker, registry, base)
        result: dict[str, Any] = {"run": run, "throughput": throughput(args, topics, ends, base)}
        if not args.skip_kill:
            result["kill"] = kill_test(args, topics, ends, base)
    except ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"kept       {base}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.keep:
        print(f"kept       {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    ok = result["throughput"]["missing"] == result["throughput"]["duplicated"] == 0
    if "kill" in result:
        ok = ok and result["kill"]["missing"] == result["kill"]["duplicated"] == 0
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
