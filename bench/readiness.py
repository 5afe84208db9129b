"""Readiness under load: how often a healthy worker answers 503, polled every second at full input rate.

Issue 16 saw `/k2/ready` answer 503 "kafka: no answer within 1s" under load and right after
catching up, on workers that were healthy: a load balancer cannot tell that from an outage.
This starts one K2 worker on fresh topics of the local stack, waits until it is ready, then
replays the sample at ``--rate`` events/s (about the worker's capacity on this machine: it
stays busy) for ``--seconds``, polling ``/k2/ready`` every second throughout and for a minute
after the input ends (catching up, then idle). Every 503 is reported with its failed checks.
It also reports the worker's time from assignment to consuming (its histogram).

    .venv/bin/python bench/readiness.py --rate 15000 --seconds 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import wait_until
from bench.runners import _NO_PROXY, K2, ROOT, Source, base_env, k2_command

SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_PASS = 4852 * 12  # data/sample with --instruments 12


def ready(port: int) -> tuple[int, Any]:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}/k2/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:
        return 0, {"failed": [f"no answer: {exc}"], "checks": {}}


def metric(port: int, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with _NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=15000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--after", type=float, default=60, help="seconds polled after the input ends")
    parser.add_argument("--broker", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "readiness.json")
    args = parser.parse_args()
    run = f"ready{time.time_ns() % 10**9}"
    source = Source(args.broker, args.registry, f"{run}.trades", f"{run}.quotes", f"{run}.reference", f"{run}.rejects")
    workdir = ROOT / "var" / "bench" / run
    workdir.mkdir(parents=True, exist_ok=True)
    env = base_env() | source.k2_env()
    k2_command(["init", "--skip-tables"], env)
    system = K2("k2", source, {}, workdir, flush_interval_s=5.0)
    system.prepare()
    system.start()
    wait_until("the worker ready", system.ready, 240, alive=[system.check])
    port = system.ports[0]
    passes = max(1, int(args.rate * args.seconds / EVENTS_PER_PASS) + 1)
    cmd = [sys.executable, "-m", "k2.cli.main", "replay", str(SAMPLE), "--loop", str(passes)]
    cmd += ["--instruments", "12", "--rate", f"{args.rate:g}", "--no-progress"]
    producer = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    polls: list[tuple[float, int, list[str]]] = []
    details: Counter[str] = Counter()
    begin = time.monotonic()
    ended: float | None = None
    try:
        while True:
            now = time.monotonic() - begin
            if ended is None and now >= args.seconds and producer.poll() is None:
                producer.kill()  # the input lasts --seconds, whatever rate the producer reached
            if ended is None and producer.poll() is not None:
                ended = now
            if int(now) % 60 == 0:
                bad = sum(1 for p in polls if p[1] != 200)
                print(f"{now:.0f}s: {len(polls)} polls, {bad} not ready", flush=True)
            if ended is not None and now - ended > args.after:
                break
            system.check()
            status, body = ready(port)
            failed = list(body.get("failed", []))
            polls.append((round(now, 1), status, failed))
            if status != 200:
                for name in failed:
                    check = body.get("checks", {}).get(name, {})
                    details[f"{name}: {check.get('detail', '')[:120]}"] += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - begin - now)))
        seconds_to_consuming = metric(port, "k2_partition_assignment_to_consuming_seconds_sum")
        positioned = metric(port, "k2_partition_assignment_to_consuming_seconds_count")
    finally:
        if producer.poll() is None:
            producer.kill()
        system.stop()
    not_ready = [p for p in polls if p[1] != 200]
    result = {
        "rate": args.rate,
        "input_seconds": ended,
        "polls": len(polls),
        "not_ready": len(not_ready),
        "not_ready_at": not_ready[:50],
        "failed_checks": dict(details.most_common()),
        "assignment_to_consuming_mean_s": (
            round(seconds_to_consuming / positioned, 2) if seconds_to_consuming and positioned else None
        ),
        "partitions_positioned": positioned,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "not_ready_at"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
