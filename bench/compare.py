#!/usr/bin/env python3
"""One run, one broker, one data set: K2 beside the floor, a bare Faust agent, Quix Streams and Kafka Connect.

1. Load once, before any clock starts: ``k2 init``, then ``k2 replay data/sample --loop N
   --loop-step 1 --instruments I`` into fresh topics (6 partitions each), N passes so that
   trades + quotes >= ``--events``. Each of the sample's companies goes out as I instruments
   (``--instruments``, 12 by default: its own symbol, key and sequence numbers each), so the
   load spreads over the partitions; the sample's three symbols alone would put 97% of it in
   one partition per topic, and no group of workers could share it.
2. Per system (``--systems``), with its own consumer group from the earliest offset and its
   own SQLite catalog: events/s from process start and steady (from its first commit or
   count) until every event is landed or counted; CPU s per million events and peak RSS of
   all its processes (/proc); for the lake systems the data files, and the missing and
   doubled (topic, partition, offset) read back from the lake's lineage columns.
3. Per lake system but ``k2x2`` (``--no-kill`` skips it): a second run, kill -9 at
   ``--kill-at`` of the load, restart at once, the same check.
4. Per lake system but ``k2x2`` (``--no-freshness`` skips it): fresh topics, the system
   started and ready, then ``k2 replay --rate R`` for about ``--freshness-s`` seconds;
   produced (Kafka CreateTime) -> visible (commit time of the snapshot that added the row's
   data file), p50 and p99.

Prints one table and writes ``bench/results/<date>.json`` (``--out``); ``--readme`` also
regenerates README's Performance section from it (``bench/report.py``). Needs the local
stack; the broker and registry are ``K2_KAFKA_BOOTSTRAP_SERVERS`` / ``K2_SCHEMA_REGISTRY_URL``
(else 127.0.0.1 on ``K2_KAFKA_PORT`` / ``K2_REGISTRY_PORT``). Exit 0; 1 when a system
failed to run; 2 when K2 lost or doubled an event.

    .venv/bin/python bench/compare.py --events 100000
    .venv/bin/python bench/compare.py --events 20000 --systems floor,faust-bare,k2 \
        --no-kill --no-freshness --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.lakecheck import exactness, file_stats, freshness, produced_times  # noqa: E402
from bench.maintenance import maintenance_phase  # noqa: E402
from bench.procs import Timeout, wait_until  # noqa: E402
from bench.runners import LAKE_SYSTEMS, SYSTEMS, Source, System, SystemFailed, base_env, k2_command, make  # noqa: E402
from bench.soak import soak_many  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_PASS = 2243 + 2609  # trades + quotes in data/sample (reference data is sent once)
PARTITIONS = 6
EXACTLY_ONCE = ("k2", "k2x2")
POLL_S = 1.0  # how often the driver looks: it shares the two cores with the system it measures


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def services() -> tuple[str, str]:
    broker = os.environ.get("K2_KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('K2_KAFKA_PORT', '9092')}"
    registry = (
        os.environ.get("K2_SCHEMA_REGISTRY_URL")
        or f"http://127.0.0.1:{os.environ.get('K2_REGISTRY_PORT', '8081')}/apis/ccompat/v7"
    )
    return broker, registry


def topics(prefix: str) -> Source:
    broker, registry = services()
    return Source(broker, registry, f"{prefix}.trades", f"{prefix}.quotes", f"{prefix}.reference", f"{prefix}.rejects")


def loader_env(source: Source, var: Path) -> dict[str, str]:
    return (
        base_env()
        | source.k2_env()
        | {
            "K2_VAR_DIR": str(var),
            "K2_TRADES_PARTITIONS": str(PARTITIONS),
            "K2_QUOTES_PARTITIONS": str(PARTITIONS),
        }
    )


def end_offsets(source: Source) -> dict[tuple[str, int], int]:
    from k2.admin.watermarks import end_offsets as read
    from k2.settings import Settings

    return read(Settings(kafka_bootstrap_servers=source.broker), source.market)


def replay_args(passes: int, instruments: int) -> list[str]:
    """``k2 replay`` of the sample: ``passes`` passes of ``instruments`` instruments per company."""
    loop = ["--loop", str(passes), "--loop-step", "1", "--instruments", str(instruments)]
    return ["replay", str(SAMPLE), *loop, "--no-progress"]


def load(source: Source, events: int, instruments: int, var: Path) -> tuple[dict[tuple[str, int], int], int, float]:
    """Fresh topics holding at least ``events`` trades + quotes: (end offsets, passes, seconds)."""
    env = loader_env(source, var)
    k2_command(["init"], env, timeout_s=300)
    passes = max(1, math.ceil(events / (EVENTS_PER_PASS * instruments)))
    begin = time.monotonic()
    k2_command(replay_args(passes, instruments), env, 3600)
    seconds = time.monotonic() - begin
    ends = end_offsets(source)
    for topic in source.market:
        got = sum(1 for t, _ in ends if t == topic)
        if got != PARTITIONS:
            raise SystemFailed(f"{topic} has {got} partitions, not {PARTITIONS}: K2_*_PARTITIONS or an old topic?")
    return ends, passes, seconds


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
    done = wait_until(
        f"{system.name}: all {system.total:,} events after the restart",
        lambda: system.progress() >= system.total and system.complete(),
        timeout_s,
        alive=[system.check],
        progress=lambda: f"{system.progress():,} of {system.total:,}",
        poll_s=POLL_S,
    )
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
    system.start()
    wait_until(f"{system.name} ready on empty topics", system.ready, 240, alive=[system.check])
    time.sleep(3)
    since_ms = int((time.time() + warmup_s) * 1000)
    passes = max(1, math.ceil(rate * seconds / (EVENTS_PER_PASS * instruments)))
    replay = [*replay_args(passes, instruments), "--rate", f"{rate:g}"]
    k2_command(replay, loader_env(source, system.workdir / "load"), timeout_s=seconds * 4 + 120)
    system.ends = end_offsets(source)
    wait_until(
        f"{system.name}: all {system.total:,} live events",
        lambda: system.progress() >= system.total and system.complete(),
        timeout_s,
        alive=[system.check],
        progress=lambda: f"{system.progress():,} of {system.total:,}",
        poll_s=POLL_S,
    )
    system.stop()
    produced = produced_times(source.broker, system.ends)
    market = [lineage for lineage in system.lineages() if lineage.topic_column is None]  # not K2's rejects
    return {"rate": rate, "events": system.total, "warmup_s": warmup_s} | freshness(
        system.catalog(), market, produced, since_ms
    )


def delete_topics(broker: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": broker})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(60)
            except Exception as exc:  # a topic already gone is fine; say anything else
                log(f"could not delete a topic: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000, help="at least this many trades + quotes")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma separated, of {', '.join(SYSTEMS)}")
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
    args = parser.parse_args()
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")

    # A SIGTERM (make interrupted, a test's timeout) must still run the finally blocks that kill the systems.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = uuid.uuid4().hex[:8]
    work = ROOT / "var" / "bench" / "compare" / run
    prefix = f"bench{run}"
    source = topics(f"{prefix}.load")
    began = time.time()
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "run": run,
        "k2_commit": report.k2_commit(),
        "machine": report.machine(),
        "versions": {"python": report.python_versions()},
        "systems": {},
    }
    failed = False
    live: list[System] = []
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
            "kill_at": args.kill_at,
            "freshness_rate": args.freshness_rate,
            "freshness_s": args.freshness_s,
            "soak_rate": None if args.no_soak else args.soak_rate,
            "soak_s": None if args.no_soak else args.soak_s,
            "load_s": round(load_s, 1),
        }

        def attempt(label: str, fn: Any, system: System) -> dict[str, Any]:
            nonlocal failed
            live.append(system)
            log(f"{label} ...")
            try:
                out: dict[str, Any] = fn(system)
            except (Timeout, SystemFailed, subprocess.SubprocessError, OSError, RuntimeError) as exc:
                failed = True
                log(f"{label} FAILED: {exc}")
                return {"error": str(exc)}
            except Exception as exc:  # a bug of the harness or a peer's library: this system's figure, not the run
                failed = True
                log(f"{label} FAILED:\n{traceback.format_exc()}")
                return {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                _stop(system)
            log(f"{label}: {json.dumps(out)}")
            return out

        for name in names:
            system = make(name, source, ends, work / name, args.flush_interval)
            results["systems"][name] = attempt(name, lambda s: throughput(s, args.timeout), system)
            if name == "k2" and not args.no_maintain and "error" not in results["systems"][name]:
                # The lake K2 just landed the load into, its worker stopped: files and a day's scan, before and after.
                results["systems"][name]["maintenance"] = attempt(
                    "k2 maintenance", lambda s: maintenance_phase(s.catalog()), system
                )
            if name in ("quix", "connect"):
                results["versions"][name] = system.versions()
        for name in (n for n in names if n in LAKE_SYSTEMS and n != "k2x2"):
            if not args.no_kill:
                system = make(name, source, ends, work / f"{name}-kill", args.flush_interval)
                results["systems"][name]["kill"] = attempt(
                    f"{name} kill -9", lambda s: kill_run(s, args.kill_at, args.timeout), system
                )
            if not args.no_freshness:
                fresh = topics(f"{prefix}.fresh{name.replace('-', '')}")
                system = make(name, fresh, {}, work / f"{name}-fresh", args.flush_interval)
                results["systems"][name]["freshness"] = attempt(
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
            results["systems"]["k2"]["soak"] = attempt(
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
    except (Timeout, SystemFailed, subprocess.SubprocessError) as exc:
        log(f"FAILED: {exc}")
        results["error"] = str(exc)
        failed = True
    finally:
        for system in live:
            _stop(system)
    results["duration_s"] = round(time.time() - began, 1)
    out = args.out or ROOT / "bench" / "results" / f"{results['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "config" in results:
        print()
        print(report.table(results))
        print()
    log(f"results in {out} ({results['duration_s'] / 60:.1f} min)")
    if args.readme and not failed:
        report.update_readme(results)
        log("README.md: Performance section regenerated")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True) if not failed else log(f"kept {work} (something failed)")
        try:
            delete_topics(source.broker, prefix)
        except Exception as exc:  # cleanup only
            log(f"could not delete the run's topics: {exc}")
    broken = [
        n
        for n in EXACTLY_ONCE
        for r in [results["systems"].get(n) or {}, (results["systems"].get(n) or {}).get("kill") or {}]
        if r.get("missing") or r.get("doubled")
    ]
    if broken:
        log(f"K2 lost or doubled events: {sorted(set(broken))}")
        return 2
    return 1 if failed else 0


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
