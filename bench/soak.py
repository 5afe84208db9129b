#!/usr/bin/env python3
"""A long run at a steady input rate: does a system's memory stay flat while it keeps up?

The throughput runs last a minute or two; a leak, or state that grows with the number of
commits (snapshot metadata, offsets maps, caches), shows only over longer runs. Here the
systems read fresh topics while ``k2 replay --rate R`` produces for about ``seconds``; the
resident set of each (VmRSS, summed over its processes) is sampled every ``every_s``
seconds. The verdict compares the second half of the run with the first: the growth per
minute of a least-squares line through the second half, and the peak of each half.

Several systems may soak side by side on the same live input (each its own consumer group
and lake): a change and its baseline measured in the same minutes, under the same load and
the same noise of a shared machine, rather than in runs far apart.

``make soak`` (60 minutes) and ``make bench`` (10 minutes, inside ``bench/compare.py``) run
it. Alone::

    .venv/bin/python bench/soak.py --rate 5000 --seconds 3600
    .venv/bin/python bench/soak.py --rate 4000 --seconds 900 \\
        --variant k2 --variant arenas2:MALLOC_ARENA_MAX=2 --probe

Exit 0; 1 when a system failed or grew faster than ``--max-slope`` MiB/min over the second
half; 2 when K2 lost or doubled an event.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lakecheck import exactness
from bench.procs import wait_until
from bench.runners import System

__all__ = ["parse_variant", "soak_many", "trend"]

ROOT = Path(__file__).resolve().parents[1]


def trend(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Peak of each half, and the second half's growth in MiB per minute (least squares). Pure."""
    if len(samples) < 4:
        raise ValueError("a trend needs at least four samples")
    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    n = len(second)
    mean_t = sum(t for t, _ in second) / n
    mean_r = sum(r for _, r in second) / n
    var = sum((t - mean_t) ** 2 for t, _ in second)
    slope = 0.0 if var == 0 else sum((t - mean_t) * (r - mean_r) for t, r in second) / var
    return {
        "first_half_peak_mib": round(max(r for _, r in first), 1),
        "second_half_peak_mib": round(max(r for _, r in second), 1),
        "second_half_growth_mib_per_min": round(slope * 60, 2),
    }


def soak_many(
    systems: Sequence[System],
    produce: Callable[[int], list[str]],
    env: dict[str, str],
    ends: Callable[[], dict[tuple[str, int], int]],
    rate: float,
    seconds: float,
    events_per_pass: int,
    timeout_s: float,
    every_s: float = 10.0,
) -> dict[str, dict[str, Any]]:
    """Run ``systems`` side by side on live input at ``rate`` for about ``seconds``: their memory over time
    and their exactness, by system name.

    ``produce(passes)`` is the ``k2`` command line that produces the input (run with ``env``);
    ``ends()`` reads the topics' end offsets once it is done.
    """
    for system in systems:
        system.prepare()
        system.start()
    for system in systems:
        wait_until(f"{system.name} ready", system.ready, 240, alive=[system.check])
    passes = max(1, math.ceil(rate * seconds / events_per_pass))
    cmd = [sys.executable, "-m", "k2.cli.main", *produce(passes), "--rate", f"{rate:g}"]
    producer = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    begin = time.monotonic()
    samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    try:
        while producer.poll() is None:
            for system in systems:
                system.check()
                samples[system.name].append((time.monotonic() - begin, system.meter.sample()))
            if time.monotonic() - begin > seconds * 3 + 120:
                raise RuntimeError(f"the producer of the soak did not finish within {seconds * 3 + 120:.0f}s")
            time.sleep(every_s)
        if producer.returncode != 0:
            raise RuntimeError(f"the soak's producer exited {producer.returncode}: {producer.stderr.read()[-2000:]!r}")
    finally:
        if producer.poll() is None:
            producer.kill()
    produced_s = time.monotonic() - begin
    out: dict[str, dict[str, Any]] = {}
    at_end = ends()
    for system in systems:
        system.ends = at_end
    for system in systems:
        wait_until(
            f"{system.name}: all {system.total:,} soak events",
            lambda s=system: s.progress() >= s.total and s.complete(),  # type: ignore[misc]
            timeout_s,
            alive=[system.check],
            poll_s=1.0,
        )
        system.meter.sample()
    for system in systems:
        system.stop()
        verdict = exactness(system.catalog(), system.lineages(), system.ends)
        out[system.name] = (
            {
                "rate": rate,
                "seconds": round(produced_s, 1),
                "events": system.total,
                "rss_peak_mib": round(system.meter.rss_max_mib, 1),
                "cpu_s": round(system.meter.cpu_s, 1),
                "samples": [[round(t, 1), round(r, 1)] for t, r in samples[system.name]],
            }
            | trend(samples[system.name])
            | verdict
        )
    return out


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:KEY=VALUE,KEY=VALUE``: a worker's name and what is added to its environment. Pure."""
    name, _, rest = text.partition(":")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a variant is NAME or NAME:KEY=VALUE,...; got {text!r}")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a variant's setting is KEY=VALUE; got {item!r} in {text!r}")
        env[key] = value
    return name, env


def main() -> int:
    from bench import compare
    from bench.loading import EVENTS_PER_PASS, delete_topics, end_offsets, loader_env, replay_args, topics
    from bench.provenance import k2_commit
    from bench.runners import K2, k2_command

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000, help="events/s produced live")
    parser.add_argument("--seconds", type=float, default=3600, help="about how long to produce, s")
    parser.add_argument("--every", type=float, default=10, help="RSS sampled every this many s")
    parser.add_argument("--instruments", type=int, default=12, help="instruments per company (k2 replay)")
    parser.add_argument("--flush-interval", type=float, default=5.0, help="the workers' commit interval, s")
    parser.add_argument(
        "--variant",
        action="append",
        help="NAME[:KEY=VALUE,...]: a worker with these variables added, soaked beside the others (default: k2)",
    )
    parser.add_argument("--probe", action="store_true", help="run the workers under bench/memprobe.py")
    parser.add_argument("--max-slope", type=float, default=0.5, help="second-half growth allowed, MiB/min")
    parser.add_argument("--timeout", type=float, default=1800, help="bound of every wait for a worker, s")
    parser.add_argument("--out", type=Path, help="results JSON (default var/bench/soak/<run>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and topics")
    args = parser.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant or ["k2"]]
    except ValueError as exc:
        parser.error(str(exc))
    if len({name for name, _ in variants}) != len(variants):
        parser.error("variant names must differ")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = uuid.uuid4().hex[:8]
    work = ROOT / "var" / "bench" / "soak" / run
    prefix = f"soak{run}"
    source = topics(f"{prefix}.live")
    load_env = loader_env(source, work / "load")
    k2_command(["init"], load_env, timeout_s=300)
    systems = [
        K2(name, source, {}, work / name, args.flush_interval, workers=1, extra_env=env, probe=args.probe)
        for name, env in variants
    ]
    compare.log(f"soak {run}: {', '.join(s.name for s in systems)} at {args.rate:,.0f} ev/s for {args.seconds:.0f}s")
    results: dict[str, Any] = {"run": run, "k2_commit": k2_commit(), "variants": dict(variants)}
    failed = False
    try:
        results["systems"] = soak_many(
            systems,
            lambda passes: replay_args(passes, args.instruments),
            load_env,
            lambda: end_offsets(source),
            args.rate,
            args.seconds,
            EVENTS_PER_PASS * args.instruments,
            args.timeout,
            args.every,
        )
    except Exception as exc:
        compare.log(f"soak FAILED: {type(exc).__name__}: {exc}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        failed = True
    finally:
        for system in systems:
            compare._stop(system)
    out = args.out or work.parent / f"{run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    lost = False
    for name, r in (results.get("systems") or {}).items():
        slope = r["second_half_growth_mib_per_min"]
        compare.log(
            f"{name}: {r['events']:,} events at {r['rate']:,.0f}/s for {r['seconds'] / 60:.1f} min; RSS peak "
            f"{r['rss_peak_mib']:,.0f} MiB (first half {r['first_half_peak_mib']:,.0f}, second "
            f"{r['second_half_peak_mib']:,.0f}); second half {slope:+.2f} MiB/min; CPU {r['cpu_s']:,.0f} s; "
            f"missing {r['missing']}, doubled {r['doubled']}"
        )
        if slope > args.max_slope:
            compare.log(f"{name}: grew faster than {args.max_slope} MiB/min over the second half")
            failed = True
        lost = lost or bool(r["missing"] or r["doubled"])
    compare.log(f"results in {out}")
    if not args.keep and not failed:
        shutil.rmtree(work, ignore_errors=True)
        delete_topics(source.broker, prefix)
    return 2 if lost else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
