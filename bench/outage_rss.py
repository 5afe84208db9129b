#!/usr/bin/env python3
"""Memory of one K2 worker while the Iceberg catalog is down and events keep arriving at full rate.

The buffer is bounded (``2 x K2_FLUSH_MAX_ROWS`` rows, :mod:`k2.pipeline.gate`): once full,
ingestion waits and Kafka keeps the events. This measures that the bound holds in a real
run: a worker on the REST catalog of the local stack lands a replay, the REST catalog is
frozen with SIGSTOP for ``--outage`` seconds while the replay goes on at full speed, then
thawed. Printed: peak RSS before and during the outage, the peak of ``k2_buffered_rows``
against the bound, how long the worker took to land everything once the catalog was
back, and whether every offset landed exactly once (``k2 audit`` when present).

    .venv/bin/python bench/outage_rss.py --events 400000 --outage 60

Needs the local stack with the REST profile (`make stack-up PROFILE=rest`); freezes that
stack's REST catalog for the outage (other users of it wait too), and drops and re-creates
K2's tables there first: a table is fed by one topic, and rows of earlier runs' topics would
read as doubled offsets of this run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_LOOP = 2243 + 2609


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def scrape(port: int, name: str) -> float:
    """Sum of a metric's samples on the worker's /metrics (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, help="about how many events to replay")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the catalog stays frozen")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from k2.admin.watermarks import end_offsets
    from k2.settings import Settings

    var_root = Path(os.environ.get("K2_VAR_DIR") or ROOT / "var")
    rest_pid = int((var_root / "run" / "rest.pid").read_text())
    rest_port = os.environ.get("K2_REST_PORT", "8181")
    s3_port = os.environ.get("K2_S3_PORT", "9000")
    run = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix="k2-outage-"))
    port = free_port()
    k2env = {
        "K2_TRADES_TOPIC": f"out{run}.trades",
        "K2_QUOTES_TOPIC": f"out{run}.quotes",
        "K2_REFERENCE_TOPIC": f"out{run}.reference",
        "K2_REJECTS_TOPIC": f"out{run}.rejects",
        "K2_APP_ID": f"k2-outage-{run}",
        "K2_VAR_DIR": str(var),
        "K2_WEB_PORT": str(port),
    }
    catalog = {
        "PYICEBERG_CATALOG__K2__TYPE": "rest",
        "PYICEBERG_CATALOG__K2__URI": f"http://127.0.0.1:{rest_port}",
        "PYICEBERG_CATALOG__K2__S3__ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "PYICEBERG_CATALOG__K2__S3__ACCESS_KEY_ID": "test",
        "PYICEBERG_CATALOG__K2__S3__SECRET_ACCESS_KEY": "test",
        "PYICEBERG_CATALOG__K2__S3__REGION": "us-east-1",
        "PYICEBERG_CATALOG__K2__S3__PATH_STYLE_ACCESS": "true",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")} | k2env | catalog
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    settings = Settings(**{k[3:].lower(): v for k, v in k2env.items()})  # type: ignore[arg-type]
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NoSuchTableError

    from k2.lake.schemas import TABLES

    props = {k.removeprefix("PYICEBERG_CATALOG__K2__").lower().replace("__", "."): v for k, v in catalog.items()}
    props = {k.replace("_", "-"): v for k, v in props.items()}
    rest = load_catalog("k2", **props)
    for table in TABLES.values():
        with contextlib.suppress(NoSuchTableError):
            rest.drop_table(table.name)
    print(f"dropped K2's tables on the REST catalog at {props['uri']}; k2 init creates them again")
    subprocess.run([str(BIN / "k2"), "init"], env=env, check=True, stdout=subprocess.DEVNULL)

    log = (var / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(BIN / "faust"), "-A", "k2.app", "worker", "-l", "info"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    loops = max(1, math.ceil(args.events / EVENTS_PER_LOOP))
    replay = None
    frozen = False
    samples: list[tuple[float, float, float]] = []  # (t, rss MiB, buffered rows)
    try:
        deadline = time.monotonic() + 120
        while b"Worker ready" not in (var / "worker.log").read_bytes():
            if time.monotonic() > deadline or worker.poll() is not None:
                print(f"worker did not come up; see {var / 'worker.log'}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        replay = subprocess.Popen(
            [str(BIN / "k2"), "replay", str(SAMPLE), "--loop", str(loops), "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(5)  # flowing and landing
        before = rss_mib(worker.pid, "VmHWM:")
        os.kill(rest_pid, signal.SIGSTOP)
        frozen = True
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.outage:
            samples.append((time.monotonic() - t0, rss_mib(worker.pid), scrape(port, "k2_buffered_rows")))
            time.sleep(1.0)
        os.kill(rest_pid, signal.SIGCONT)
        frozen = False
        thawed = time.monotonic()
        replay.wait(args.timeout)
        ends = end_offsets(settings, settings.source_topics)
        total = sum(ends.values())
        while time.monotonic() - thawed < args.timeout:
            if scrape(port, "k2_lake_lag") == 0 and scrape(port, "k2_consumer_lag") == 0 and total:
                lag_zero = True
                break
            time.sleep(1.0)
        else:
            lag_zero = False
        caught_up = time.monotonic() - thawed
    finally:
        if frozen:
            os.kill(rest_pid, signal.SIGCONT)
        if replay is not None and replay.poll() is None:
            replay.kill()
        worker.terminate()
        worker.wait(60)
    peak_rss = max(r for _, r, _ in samples)
    peak_rows = max(b for _, _, b in samples)
    audit = subprocess.run([str(BIN / "k2"), "audit"], env=env, capture_output=True, text=True, check=False)
    result = {
        "events": total,
        "outage_s": args.outage,
        "peak_rss_before_mib": round(before),
        "peak_rss_during_outage_mib": round(peak_rss),
        "peak_buffered_rows": int(peak_rows),
        "buffer_bound_rows": 2 * settings.flush_max_rows,
        "caught_up_after_s": round(caught_up, 1),
        "lake_lag_zero": lag_zero,
        "audit_exit": audit.returncode,
    }
    print(json.dumps(result, indent=2))
    print(audit.stdout[-2000:] or audit.stderr[-2000:])
    return 0 if lag_zero and peak_rows <= 2 * settings.flush_max_rows and audit.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
