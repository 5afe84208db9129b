#!/usr/bin/env python3
"""End-to-end throughput of one K2 worker: Kafka -> decode/validate -> buffer -> Iceberg.

Loads the bundled sample, looped to about N events, into fresh topics first; then starts
`faust -A k2.app worker` and times it from start until every source offset is recorded
in the lake (lake lag zero). Reports events/s over the whole run (start-up included) and
over the steady part (from the first commit), and the worker's peak RSS.

    .venv/bin/python bench/e2e_throughput.py --events 1000000

Needs the local stack (`make stack-up`). Uses its own topics, consumer group and var dir
under /tmp, so it does not disturb a running `make run`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_LOOP = 2243 + 2609  # trades + quotes in data/sample (reference data is sent once)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="about how many events (default 1,000,000)")
    parser.add_argument(
        "--loop-step",
        type=int,
        default=1,
        metavar="MS",
        help="k2 replay --loop-step: passes stay on the sample's days (default 1; 0: each pass after the last, "
        "a day partition per pass as before)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from k2.admin.watermarks import end_offsets
    from k2.catalog import load_k2_catalog
    from k2.lake.status import table_status
    from k2.settings import Settings

    loops = max(1, math.ceil(args.events / EVENTS_PER_LOOP))
    run = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix="k2-bench-"))
    k2env = {
        "K2_TRADES_TOPIC": f"bench{run}.trades",
        "K2_QUOTES_TOPIC": f"bench{run}.quotes",
        "K2_REFERENCE_TOPIC": f"bench{run}.reference",
        "K2_REJECTS_TOPIC": f"bench{run}.rejects",
        "K2_APP_ID": f"k2-bench-{run}",
        "K2_VAR_DIR": str(var),
        "K2_WEB_PORT": str(free_port()),
    }
    # Tuning knobs given to the bench (K2_FLUSH_*, ...) reach the worker; names it owns are its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")} | k2env
    settings = Settings(**{k[3:].lower(): v for k, v in k2env.items()})  # type: ignore[arg-type]

    subprocess.run([str(BIN / "k2"), "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    t = time.perf_counter()
    subprocess.run(
        [str(BIN / "k2"), "replay", str(SAMPLE), "--loop", str(loops), "--no-progress"]
        + (["--loop-step", str(args.loop_step)] if args.loop_step else []),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    replay_s = time.perf_counter() - t
    ends = end_offsets(settings, settings.source_topics)
    total = sum(ends.values())
    print(f"loaded   {total:,} events ({loops} loops of data/sample) in {replay_s:.1f}s ({total / replay_s:,.0f}/s)")

    log = (var / "worker.log").open("wb")
    start = time.perf_counter()
    worker = subprocess.Popen(
        [str(BIN / "faust"), "-A", "k2.app", "worker", "-l", "info"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    catalog = load_k2_catalog(settings)
    first_commit: float | None = None
    landed = 0
    try:
        while time.perf_counter() - start < args.timeout:
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}; see {var / 'worker.log'}", file=sys.stderr)
                return 1
            marks: dict[tuple[str, int], int] = {}
            for st in table_status(catalog):
                for tp, off in st.offsets.items():
                    marks[tp] = max(off, marks.get(tp, -1))
            landed = sum(min(end, marks.get(tp, -1) + 1) for tp, end in ends.items())
            if landed and first_commit is None:
                first_commit = time.perf_counter()
                first_landed = landed
            if landed >= total:
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - start
        rss = peak_rss_mib(worker.pid)
    finally:
        worker.terminate()
        worker.wait(60)
    if landed < total:
        print(f"timeout: {landed:,} of {total:,} landed", file=sys.stderr)
        return 1
    assert first_commit is not None
    steady = (total - first_landed) / max(1e-9, elapsed - (first_commit - start))
    print(f"landed   {total:,} events in {elapsed:.1f}s from worker start: {total / elapsed:,.0f} events/s")
    print(f"steady   {steady:,.0f} events/s after the first commit ({first_commit - start:.1f}s after start)")
    print(f"memory   worker peak RSS {rss:,.0f} MiB")
    if os.environ.get("K2_BENCH_KEEP"):
        print(f"kept     {var}")
    else:
        shutil.rmtree(var, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
