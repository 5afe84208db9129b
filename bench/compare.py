#!/usr/bin/env python3
"""K2 beside the floor, a bare Faust agent, Quix Streams and Kafka Connect: one broker, one data set, rounds.

1. Load once, before any clock starts: ``k2 init``, then ``k2 replay data/sample --loop N
   --loop-step 1 --instruments I`` into fresh topics (6 partitions each), N passes so that
   trades + quotes >= ``--events``. Each of the sample's companies goes out as I instruments
   (``--instruments``, 12 by default), so the load spreads over the partitions.
2. Rounds (``--rounds``, 3 by default): in each, every system of ``--systems`` in turn, in that
   order, reads the whole load with a consumer group of its own from the earliest offset into a
   lake (SQLite catalog) of its own: events/s, CPU s per million events, peak RSS, files,
   missing and doubled offsets (``bench/phases.py`` ``throughput``). A system of ``--once``
   (the bare Faust agent by default: twenty times slower than the rest) runs in the first round
   only. A machine disturbed for a while disturbs one round of every system, not every run of
   one: per system the median and range (min-max) over the rounds, and its ratio to K2 within
   each round, summarised the same way (``bench/rounds.py``). A round whose floor's rate or
   CPU per event is more than ``--deviation`` (25%) from the floor's median is flagged as
   disturbed; its figures stay in the medians.
3. Once per bench, after the rounds: ``k2 maintain`` on the lake of K2's first round (unless
   ``--no-maintain``); per lake system but ``k2x2`` a kill -9 run (``--no-kill``) and a
   freshness run (``--no-freshness``); K2's soak (``--no-soak``, ``bench/soak.py``).

Prints the tables and writes ``bench/results/<date>.json`` (``--out``; rewritten after every
round, so that a run stopped late keeps its rounds); ``--readme`` also regenerates README's
Performance section from it (``bench/report.py``). Needs the local stack; the broker and
registry are ``K2_KAFKA_BOOTSTRAP_SERVERS`` / ``K2_SCHEMA_REGISTRY_URL`` (else 127.0.0.1 on
``K2_KAFKA_PORT`` / ``K2_REGISTRY_PORT``). Exit 0; 1 when a system failed to run; 2 when K2 lost
or doubled an event.

    .venv/bin/python bench/compare.py --events 100000 --rounds 3
    .venv/bin/python bench/compare.py --events 20000 --rounds 2 --systems floor,faust-bare,k2 --once '' \
        --no-kill --no-freshness --no-soak --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import provenance, report, rounds  # noqa: E402
from bench.loading import (  # noqa: E402
    EVENTS_PER_PASS,
    PARTITIONS,
    delete_topics,
    end_offsets,
    load,
    loader_env,
    replay_args,
    topics,
)
from bench.maintenance import maintenance_phase  # noqa: E402
from bench.phases import fresh_run, kill_run, throughput  # noqa: E402
from bench.procs import Timeout  # noqa: E402
from bench.runners import BASELINE_VAR, LAKE_SYSTEMS, SYSTEMS, System, SystemFailed, k2_command, make  # noqa: E402
from bench.soak import soak_many  # noqa: E402

EXACTLY_ONCE = ("k2", "k2x2", "k2-base")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="at least this many trades + quotes")
    parser.add_argument(
        "--systems",
        default=",".join(n for n in SYSTEMS if n != "k2-base"),
        help=f"comma separated, of {', '.join(SYSTEMS)} (k2-base with --baseline)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every system, interleaved (at least 1)")
    parser.add_argument("--once", default="faust-bare", help="systems run in the first round only ('' for none)")
    parser.add_argument(
        "--deviation",
        type=float,
        default=rounds.DEVIATION,
        help="a round whose floor's rate or CPU per event is further than this share from the floor's median is "
        "flagged as disturbed",
    )
    parser.add_argument(
        "--instruments",
        type=int,
        default=12,
        help="each company of the sample sent as this many instruments (k2 replay --instruments), so the load "
        "spreads over the partitions: the sample's three symbols alone fill one partition per topic",
    )
    parser.add_argument("--flush-interval", type=float, default=5.0, help="every lake system's commit interval, s")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 runs")
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of the load landed at the kill")
    parser.add_argument("--no-freshness", action="store_true", help="skip the freshness phase")
    parser.add_argument("--freshness-rate", type=float, default=3000, help="events/s produced live")
    parser.add_argument("--freshness-s", type=float, default=60, help="about how long to produce live")
    parser.add_argument("--freshness-warmup", type=float, default=10, help="events of the first N s not counted")
    parser.add_argument("--no-soak", action="store_true", help="skip K2's long run at a steady rate (memory over time)")
    parser.add_argument("--no-maintain", action="store_true", help="skip maintenance of K2's lake after its run")
    parser.add_argument("--soak-rate", type=float, default=10_000, help="events/s produced live during the soak")
    parser.add_argument("--soak-s", type=float, default=600, help="about how long the soak produces, s")
    parser.add_argument("--timeout", type=float, default=1800, help="bound of every wait for a system, s")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<date>.json)")
    parser.add_argument("--readme", action="store_true", help="regenerate README's Performance section from it")
    parser.add_argument("--keep", action="store_true", help="keep the work folders and topics")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of K2 (e.g. `git archive main | tar -x -C var/base`), run as the system k2-base "
        "in the same rounds as this one's k2 (throughput rounds only)",
    )
    args = parser.parse_args()
    args.names = _names(args.systems)
    args.once_names = _names(args.once)
    unknown = sorted((set(args.names) | set(args.once_names)) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if "k2-base" in args.names:
        if args.baseline is None or not (args.baseline / "k2" / "app.py").is_file():
            parser.error("k2-base runs the K2 of --baseline DIR, a checkout holding k2/app.py")
        os.environ[BASELINE_VAR] = str(args.baseline.resolve())
    return args


class Attempts:
    """Runs one phase of one system: its figures, or ``{"error": ...}`` said and remembered; the system stopped."""

    def __init__(self) -> None:
        self.failed = False
        self.live: list[System] = []

    def __call__(self, label: str, fn: Callable[[System], dict[str, Any]], system: System) -> dict[str, Any]:
        self.live.append(system)
        log(f"{label} ...")
        try:
            out = fn(system)
        except (Timeout, SystemFailed, subprocess.SubprocessError, OSError, RuntimeError) as exc:
            self.failed = True
            log(f"{label} FAILED: {exc}")
            return {"error": str(exc)}
        except Exception as exc:  # a bug of the harness or a peer's library: this system's figure, not the run
            self.failed = True
            log(f"{label} FAILED:\n{traceback.format_exc()}")
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            _stop(system)
        log(f"{label}: {json.dumps(out)}")
        return out

    def stop_all(self) -> None:
        for system in self.live:
            _stop(system)


def summarize(results: dict[str, Any], names: list[str], deviation: float) -> None:
    """Per system the medians, ranges and ratios to K2 over the rounds so far; the disturbed rounds."""
    figures = [r["systems"] for r in results["rounds"]]
    before = results["systems"]
    results["systems"] = {}
    for name in names:
        phases = {k: v for k, v in before.get(name, {}).items() if k in report.PHASES}
        summary = rounds.summarize(figures, name)
        if "k2" in names and name != "k2":
            summary["vs_k2"] = rounds.ratios(figures, name)
        results["systems"][name] = summary | phases
    results["disturbed"] = rounds.disturbed(figures, deviation)


def main() -> int:
    args = arguments()
    names: list[str] = args.names
    # A SIGTERM (make interrupted, a test's timeout) must still run the finally blocks that kill the systems.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = uuid.uuid4().hex[:8]
    work = ROOT / "var" / "bench" / "compare" / run
    prefix = f"bench{run}"
    source = topics(f"{prefix}.load")
    began = time.time()
    results: dict[str, Any] = {
        **provenance.header(run),
        "rounds": [],
        "systems": {},
    }
    out = args.out or ROOT / "bench" / "results" / f"{results['date']}.json"

    def save() -> None:
        results["duration_s"] = round(time.time() - began, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    attempt = Attempts()
    try:
        log(f"run {run}: loading {args.events:,}+ events into {source.trades}, {source.quotes} ({source.broker})")
        ends, passes, load_s = load(source, args.events, args.instruments, work / "load")
        total = sum(ends.values())
        log(f"loaded {total:,} events ({passes} passes) in {load_s:.1f}s")
        results["config"] = {
            "events": total,
            "loops": passes,
            "instruments": args.instruments,
            "partitions": PARTITIONS,
            "flush_interval_s": args.flush_interval,
            "rounds": args.rounds,
            "once": [n for n in args.once_names if n in names],
            "deviation": args.deviation,
            "kill_at": args.kill_at,
            "freshness_rate": args.freshness_rate,
            "freshness_s": args.freshness_s,
            "soak_rate": None if args.no_soak else args.soak_rate,
            "soak_s": None if args.no_soak else args.soak_s,
            "load_s": round(load_s, 1),
        }
        for number in range(1, args.rounds + 1):
            this: dict[str, Any] = {"round": number, "loadavg_start": list(os.getloadavg()), "systems": {}}
            results["rounds"].append(this)
            for name in names:
                if number > 1 and name in args.once_names:
                    continue
                system = make(name, source, ends, work / f"round{number}" / name, args.flush_interval)
                figures = attempt(f"round {number}: {name}", lambda s: throughput(s, args.timeout), system)
                this["systems"][name] = figures
                if name in ("quix", "connect") and "error" not in figures:
                    results["versions"][name] = system.versions()
                if name == "k2" and number == 1 and not args.no_maintain and "error" not in figures:
                    # The lake K2 just landed the load into, its worker stopped: files and a day's scan, before/after.
                    results["systems"]["k2"] = {
                        "maintenance": attempt("k2 maintenance", lambda s: maintenance_phase(s.catalog()), system)
                    }
            summarize(results, names, args.deviation)
            save()
            log(f"round {number} done; disturbed rounds so far: {results['disturbed'] or 'none'}")
        once_per_bench(args, results, attempt, source, ends, work, prefix)
    except (Timeout, SystemFailed, subprocess.SubprocessError) as exc:
        log(f"FAILED: {exc}")
        results["error"] = str(exc)
        attempt.failed = True
    finally:
        attempt.stop_all()
    save()
    if "config" in results:
        print()
        print(report.table(results))
        print()
        print(report.round_table(results))
        print()
    log(f"results in {out} ({results['duration_s'] / 60:.1f} min)")
    if args.readme and not attempt.failed:
        report.update_readme(results, scaleout=report.newest_scaleout())
        log("README.md: Performance section regenerated")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True) if not attempt.failed else log(f"kept {work} (something failed)")
        try:
            for problem in delete_topics(source.broker, prefix):
                log(problem)
        except Exception as exc:  # cleanup only
            log(f"could not delete the run's topics: {exc}")
    if broken := exactly_once_broken(results):
        log(f"K2 lost or doubled events: {broken}")
        return 2
    return 1 if attempt.failed else 0


def once_per_bench(
    args: argparse.Namespace,
    results: dict[str, Any],
    attempt: Attempts,
    source: Any,
    ends: dict[tuple[str, int], int],
    work: Path,
    prefix: str,
) -> None:
    """The long phases, after the rounds: kill -9 and freshness per lake system, K2's soak."""
    names: list[str] = args.names
    systems = results["systems"]
    for name in (n for n in names if n in LAKE_SYSTEMS and n != "k2x2"):
        if not args.no_kill:
            system = make(name, source, ends, work / f"{name}-kill", args.flush_interval)
            systems[name]["kill"] = attempt(
                f"{name} kill -9", lambda s: kill_run(s, args.kill_at, args.timeout), system
            )
        if not args.no_freshness:
            fresh = topics(f"{prefix}.fresh{name.replace('-', '')}")
            system = make(name, fresh, {}, work / f"{name}-fresh", args.flush_interval)
            systems[name]["freshness"] = attempt(
                f"{name} freshness",
                lambda s: fresh_run(
                    s, args.freshness_rate, args.freshness_s, args.freshness_warmup, args.instruments, args.timeout
                ),
                system,
            )
    if "k2" in names and not args.no_soak:
        soaked = topics(f"{prefix}.soak")
        load_env = loader_env(soaked, work / "k2-soak" / "load")
        k2_command(["init"], load_env, timeout_s=300)
        system = make("k2", soaked, {}, work / "k2-soak", args.flush_interval)
        systems["k2"]["soak"] = attempt(
            "k2 soak",
            lambda s: soak_many(
                [s],
                lambda passes: replay_args(passes, args.instruments),
                load_env,
                lambda: end_offsets(soaked),
                args.soak_rate,
                args.soak_s,
                EVENTS_PER_PASS * args.instruments,
                args.timeout,
            )[s.name],
            system,
        )


def exactly_once_broken(results: dict[str, Any]) -> list[str]:
    """The exactly-once systems that lost or doubled an offset in a round or after the kill."""
    broken = set()
    for name in EXACTLY_ONCE:
        runs = [r["systems"].get(name) or {} for r in results.get("rounds", [])]
        runs.append((results["systems"].get(name) or {}).get("kill") or {})
        if any(r.get("missing") or r.get("doubled") for r in runs):
            broken.add(name)
    return sorted(broken)


def _stop(system: System) -> None:
    try:
        system.stop()
    except Exception as exc:  # stopping is best effort; killing is not
        log(f"{system.name}: stop failed ({exc}); killing")
        try:
            system.kill()
        except Exception as exc2:
            log(f"{system.name}: kill failed too: {exc2}")


if __name__ == "__main__":
    sys.exit(main())
