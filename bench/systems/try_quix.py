#!/usr/bin/env python3
"""Measure the Quix system on K2's data: throughput, CPU, memory, files; then a kill -9 and what it cost.

Loads the bundled sample, looped, into fresh topics (``k2 init``, ``k2 replay data/sample
--loop N --no-progress``), then two runs over those same topics, each with its own consumer
group and lake:

1. clean: start Quix, time until every (partition, offset) is a row (polling the tables'
   snapshot summaries, then checking rows), events/s from start and after the first commit
   (steady), CPU seconds per million events, peak RSS, data files and their average size;
2. crash (twice by default, ``--kill-mode``): start Quix, SIGKILL it once ``--kill-at`` of
   the events are in the lake ("landed": usually just after a checkpoint committed), or
   then right after the first Iceberg append of the next checkpoint ("mid-flush": inside
   the window between the sink's appends and the offset commit); start it again at once,
   wait until every offset is a row, stop it cleanly, and count the (partition, offset)
   pairs missing and doubled.

Run with K2's interpreter, from the repository, against the local stack::

    PYTHONPATH=. /work/main/.venv/bin/python bench/systems/try_quix.py --loops 100

Kafka and the registry come from ``K2_KAFKA_BOOTSTRAP_SERVERS`` and ``K2_SCHEMA_REGISTRY_URL``.
Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.systems.quix import QuixSystem, Usage, venv_versions  # noqa: E402
from k2.admin.watermarks import end_offsets  # noqa: E402
from k2.settings import Settings  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
POLL_S = 0.5

Ends = Mapping[tuple[str, int], int]


class Timeout(RuntimeError):
    """A bounded wait ran out; the message says what was awaited and how far it got."""


@dataclass(frozen=True)
class Count:
    """What the lake holds against what Kafka holds, by (partition, offset)."""

    rows: int
    distinct: int
    missing: int
    duplicates: int
    """Rows beyond the first for a (partition, offset): rows - distinct."""
    out_of_range: int
    """Rows whose offset is not below its partition's end offset (should be 0)."""


@dataclass(frozen=True)
class FileStats:
    files: int
    bytes: int
    snapshots: int

    @property
    def avg_kib(self) -> float:
        return self.bytes / max(1, self.files) / 1024


def k2(args: list[str], env: Mapping[str, str]) -> None:
    """Run a ``k2`` subcommand with this interpreter and this checkout's code."""
    cmd = [sys.executable, "-m", "k2.cli.main", *args]
    subprocess.run(cmd, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def snapshot_rows(system: QuixSystem) -> int:
    """Rows in the current snapshots of the system's tables (0 for a table with none yet)."""
    catalog = system.catalog()
    rows = 0
    for table_name in system.tables.values():
        try:
            snap = catalog.load_table(table_name).current_snapshot()
        except Exception:  # the table is created by the app at start-up
            continue
        if snap is not None:
            rows += int(snap.summary["total-records"] or 0)
    return rows


def count(system: QuixSystem, ends: Ends) -> Count:
    """Read every table's (kafka_partition, kafka_offset) and compare with the end offsets."""
    import pyarrow.compute as pc

    catalog = system.catalog()
    rows = distinct = missing = out_of_range = 0
    for kind, table_name in system.tables.items():
        topic = system.topics[kind]
        arrow = catalog.load_table(table_name).scan(selected_fields=("kafka_partition", "kafka_offset")).to_arrow()
        rows += arrow.num_rows
        pairs = arrow.group_by(["kafka_partition", "kafka_offset"]).aggregate([])
        present: dict[int, int] = {}
        for partition in pc.unique(pairs["kafka_partition"]).to_pylist():
            offsets = pairs.filter(pc.equal(pairs["kafka_partition"], partition))
            end = ends.get((topic, partition), 0)
            inside = pc.sum(pc.less(offsets["kafka_offset"], end)).as_py() or 0
            present[partition] = inside
            out_of_range += offsets.num_rows - inside
        distinct += pairs.num_rows
        for (t, partition), end in ends.items():
            if t == topic:
                missing += end - present.get(partition, 0)
    return Count(rows, distinct, missing, rows - distinct, out_of_range)


def file_stats(system: QuixSystem) -> FileStats:
    """Live data files of the tables (Quix only appends: every file it wrote) and snapshots."""
    catalog = system.catalog()
    files = size = snapshots = 0
    for table_name in system.tables.values():
        table = catalog.load_table(table_name)
        listing = table.inspect.files()
        files += listing.num_rows
        size += sum(listing["file_size_in_bytes"].to_pylist())
        snapshots += len(table.snapshots())
    return FileStats(files, size, snapshots)


def wait_for(
    what: str, done: Callable[[], bool], system: QuixSystem, timeout_s: float, progress: Callable[[], str]
) -> float:
    """Poll ``done`` (sampling the process's usage each time) until true; the monotonic time it was.

    Raises:
        Timeout: ``timeout_s`` passed first; the message ends with ``progress()``.
        RuntimeError: Quix exited while we waited.
    """
    begin = time.monotonic()
    while time.monotonic() - begin < timeout_s:
        system.usage()
        if done():
            return time.monotonic()
        if system.pid is not None and not system.running():
            raise RuntimeError(f"Quix exited while waiting for {what}; see {system.log_path}")
        time.sleep(POLL_S)
    raise Timeout(f"timed out after {timeout_s:.0f}s waiting for {what}: {progress()}")


def wait_all_landed(system: QuixSystem, ends: Ends, timeout_s: float) -> tuple[float, float | None, int]:
    """Wait until every offset is a row. Returns (done time, first-commit time, rows at first commit).

    The cheap snapshot summaries are polled; the rows are read only once they could be complete.
    """
    total = sum(ends.values())
    first: list[tuple[float, int]] = []
    last_checked = -1

    def done() -> bool:
        nonlocal last_checked
        rows = snapshot_rows(system)
        if rows and not first:
            first.append((time.monotonic(), rows))
        if rows < total or rows == last_checked:
            return False
        last_checked = rows
        return count(system, ends).missing == 0

    at = wait_for(
        "every event in the lake", done, system, timeout_s, lambda: f"{snapshot_rows(system):,} of {total:,} rows"
    )
    return (at, first[0][0], first[0][1]) if first else (at, None, 0)


def clean_run(system: QuixSystem, ends: Ends, timeout_s: float) -> dict[str, Any]:
    """Run 1: start, land everything, measure."""
    total = sum(ends.values())
    start = time.monotonic()
    system.start()
    ready_s = system.wait_ready(timeout_s)
    done, first, first_rows = wait_all_landed(system, ends, timeout_s)
    usage = system.usage()
    system.stop()
    final = count(system, ends)
    files = file_stats(system)
    elapsed = done - start
    steady = (total - first_rows) / (done - first) if first and done > first else float("nan")
    assert usage is not None
    return {
        "events": total,
        "ready_s": round(ready_s, 2),
        "first_commit_s": round(first - start, 2) if first else None,
        "all_landed_s": round(elapsed, 2),
        "events_per_s": round(total / elapsed),
        "steady_events_per_s": round(steady),
        "cpu_s": round(usage.cpu_s, 2),
        "cpu_s_per_million": round(usage.cpu_s / total * 1e6, 2),
        "peak_rss_mib": round(usage.peak_rss_mib, 1),
        "data_files": files.files,
        "data_bytes": files.bytes,
        "avg_file_kib": round(files.avg_kib, 1),
        "snapshots": files.snapshots,
        "count": asdict(final),
    }


def kill_mid_flush(system: QuixSystem, timeout_s: float) -> None:
    """SIGKILL right after the first Iceberg append of a checkpoint, before its offsets are committed.

    Waits for a quiet second (between two checkpoints), then for the next append line in
    Quix's log, polled every 10 ms: the other partitions' appends and the offset commit of
    that checkpoint have not happened yet.
    """
    deadline = time.monotonic() + timeout_s
    seen, quiet_since = system.appends_logged(), time.monotonic()
    while time.monotonic() < deadline:
        now = system.appends_logged()
        if now != seen:
            if time.monotonic() - quiet_since >= 1.0:
                system.kill()
                return
            seen, quiet_since = now, time.monotonic()
        if not system.running():
            raise RuntimeError(f"Quix exited while waiting for a checkpoint; see {system.log_path}")
        system.usage()
        time.sleep(0.01)
    raise Timeout(f"no checkpoint began within {timeout_s:.0f}s (no new 'Appended' line in {system.log_path})")


def crash_run(system: QuixSystem, ends: Ends, kill_at: float, mode: str, timeout_s: float) -> dict[str, Any]:
    """Run 2: kill -9 once ``kill_at`` of the events landed (then mid-flush if asked), restart at once, count."""
    total = sum(ends.values())
    start = time.monotonic()
    system.start()
    system.wait_ready(timeout_s)
    wait_for(
        f"{kill_at:.0%} of the events in the lake",
        lambda: snapshot_rows(system) >= kill_at * total,
        system,
        timeout_s,
        lambda: f"{snapshot_rows(system):,} of {total:,} rows",
    )
    if mode == "mid-flush":
        kill_mid_flush(system, timeout_s)
    else:
        system.kill()
    killed = time.monotonic()
    at_kill = snapshot_rows(system)
    system.start()
    done, _, _ = wait_all_landed(system, ends, timeout_s)
    system.stop()
    final = count(system, ends)
    usages: list[Usage] = system.usages()
    return {
        "events": total,
        "kill_mode": mode,
        "killed_after_s": round(killed - start, 2),
        "rows_at_kill": at_kill,
        "landed_after_restart_s": round(done - killed, 2),
        "cpu_s": round(sum(u.cpu_s for u in usages), 2),
        "count": asdict(final),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=100, help="passes of data/sample (4,852 events each)")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="Quix commit_interval, seconds")
    parser.add_argument("--partitioning", choices=("quix", "k2"), default="quix")
    parser.add_argument("--guarantee", choices=("at-least-once", "exactly-once"), default="at-least-once")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction landed when the crash run is killed")
    parser.add_argument(
        "--kill-mode",
        choices=("landed", "mid-flush", "both"),
        default="both",
        help="landed: kill as soon as --kill-at is seen in the lake; mid-flush: then wait for the next checkpoint "
        "and kill right after its first Iceberg append (the at-least-once window); both: one crash run each",
    )
    parser.add_argument(
        "--session-timeout-ms", type=int, help="Quix consumer's session.timeout.ms (librdkafka default 45000)"
    )
    parser.add_argument("--skip-crash", action="store_true")
    parser.add_argument("--timeout", type=float, default=900, help="bound of every wait, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    names = {
        "K2_TRADES_TOPIC": f"quixbench{run}.trades",
        "K2_QUOTES_TOPIC": f"quixbench{run}.quotes",
        "K2_REFERENCE_TOPIC": f"quixbench{run}.reference",
        "K2_REJECTS_TOPIC": f"quixbench{run}.rejects",
    }
    base = Path(tempfile.mkdtemp(prefix=f"quixbench-{run}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")} | names
    env["K2_VAR_DIR"] = str(base / "k2")  # k2 init makes K2's tables too; keep them out of the way
    settings = Settings(**{k[3:].lower(): v for k, v in env.items() if k.startswith("K2_")})  # type: ignore[arg-type]
    topics = {"trades": settings.trades_topic, "quotes": settings.quotes_topic}

    k2(["init"], env)
    t = time.perf_counter()
    k2(["replay", str(SAMPLE), "--loop", str(args.loops), "--no-progress"], env)
    replay_s = time.perf_counter() - t
    ends = end_offsets(settings, topics.values())
    total = sum(ends.values())
    print(f"loaded   {total:,} events into {', '.join(topics.values())} in {replay_s:.1f}s")
    print(f"load     {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores before the runs")

    consumer_config = {"session.timeout.ms": args.session_timeout_ms} if args.session_timeout_ms else {}

    def system(label: str) -> QuixSystem:
        s = QuixSystem(
            settings.kafka_bootstrap_servers,
            settings.schema_registry_url,
            topics,
            base / label,
            commit_interval_s=args.commit_interval,
            consumer_group=f"quixbench-{run}-{label}",
            partitioning=args.partitioning,
            consumer_config=consumer_config,
            processing_guarantee=args.guarantee,
        )
        s.prepare()
        return s

    results: dict[str, Any] = {
        "loops": args.loops,
        "commit_interval_s": args.commit_interval,
        "partitioning": args.partitioning,
        "processing_guarantee": args.guarantee,
        "consumer_config": consumer_config,
        "loadavg_before": os.getloadavg(),
    }
    clean = system("clean")
    results["venv"] = venv_versions(clean.venv)
    r = results["clean"] = clean_run(clean, ends, args.timeout)
    print(
        f"clean    {r['events']:,} events landed in {r['all_landed_s']}s from start: {r['events_per_s']:,} events/s; "
        f"steady {r['steady_events_per_s']:,}/s after the first commit at {r['first_commit_s']}s "
        f"(ready after {r['ready_s']}s)"
    )
    print(
        f"cost     {r['cpu_s']} CPU s ({r['cpu_s_per_million']} per million events), peak RSS {r['peak_rss_mib']} MiB"
    )
    print(
        f"files    {r['data_files']} data files, {r['data_bytes'] / 2**20:.1f} MiB, avg {r['avg_file_kib']} KiB; "
        f"{r['snapshots']} snapshots"
    )
    print(f"check    {r['count']}")
    modes = () if args.skip_crash else ("landed", "mid-flush") if args.kill_mode == "both" else (args.kill_mode,)
    for mode in modes:
        crash = system(f"crash-{mode}")
        r = results[f"crash-{mode}"] = crash_run(crash, ends, args.kill_at, mode, args.timeout)
        c = r["count"]
        print(
            f"kill -9  ({mode}) after {r['killed_after_s']}s with {r['rows_at_kill']:,} rows in the lake; "
            f"restarted at once, all landed {r['landed_after_restart_s']}s after the kill"
        )
        print(
            f"crash    {c['rows']:,} rows for {r['events']:,} events: {c['missing']:,} missing, "
            f"{c['duplicates']:,} duplicated, {c['out_of_range']} out of range"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.keep:
        print(f"kept     {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
