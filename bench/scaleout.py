#!/usr/bin/env python3
"""Scale-out: 1, 3 and 6 K2 workers in one group, 12 partitions per topic, the REST catalog over S3.

Each worker commits its own partitions to the same tables every flush interval, so a table
takes N snapshots per interval, N times the small files, and optimistic commits conflict more
as N grows. Per count of workers (``--workers``) and flush interval (``--flush-interval``):

1. fresh topics of ``--partitions`` partitions per market topic; K2's tables purged from the
   REST catalog (the local stack's ``rest`` profile) and created again by ``k2 init``;
2. N workers started (one consumer group), ready, and the group settled: every market
   partition held by exactly one worker and consuming;
3. ``k2 replay --rate`` at N x ``--rate-per-worker`` events/s for about ``--seconds`` (one pass
   of the sample, each company as as many instruments as that takes: every worker holds about
   as many symbols at every N; with ``--instruments`` that many, and as many passes as the
   events take, so that runs of different lengths hold the same symbols), then until every
   event is landed. The measuring window runs
   from the start of production to the last event landed; the workers' start-up is outside it.

Measured over the window: snapshots and data files per table per minute (from the tables'
snapshots, which name the committing worker: ``k2.worker-id``); commits, their attempts and
failures from the workers' ``/metrics`` (``k2_iceberg_commit_attempts_total`` above
``k2_flushes_total``: retries after a conflict), and the mean commit time; freshness, produced
(Kafka CreateTime) -> visible (the committing snapshot's time) of the events produced after
``--warmup`` s, p50/p99/max (as ``make bench``'s freshness phase); CPU s per million events of
the group (all workers' CPU over all events) and of each worker (its CPU over the events it
consumed); the cores the broker, the REST catalog and S3 kept busy, and the machine's (/proc);
its load average; missing and doubled offsets. The goal the issue states is
checked: freshness p99 and CPU per event (the group's) at the most workers within 20% of one's.

Writes ``bench/results/scaleout/<date>.json`` (``--out``) and prints the table; ``--readme``
regenerates README's Performance section with it (``bench/report.py``). Needs the local stack
with the ``rest`` profile (``make bench-scaleout`` starts it).

    .venv/bin/python bench/scaleout.py --workers 1,3,6 --rate-per-worker 500 --seconds 120
    .venv/bin/python bench/scaleout.py --workers 1,2 --seconds 30 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from pyiceberg.catalog import Catalog  # noqa: E402
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError  # noqa: E402

from bench import provenance, scaleout_report  # noqa: E402
from bench.lakecheck import Lineage, SnapshotTimes, commit_stats, exactness, freshness, produced_times  # noqa: E402
from bench.loading import (  # noqa: E402
    EVENTS_PER_PASS,
    delete_topics,
    end_offsets,
    loader_env,
    passes_for,
    replay_args,
    topics,
)
from bench.phases import wait_landed  # noqa: E402
from bench.procs import TICKS, Meter, wait_until  # noqa: E402
from bench.runners import K2, QUOTES_TABLE, TRADES_TABLE, k2_command  # noqa: E402
from k2.catalog import bounded  # noqa: E402
from k2.lake.rest import BoundedRestCatalog  # noqa: E402

__all__ = ["RestK2", "commit_steps", "instruments_for", "metric_totals", "per_worker", "replay_plan", "settled"]

METRICS = (
    "k2_events_consumed_total",
    "k2_flushes_total",
    "k2_iceberg_commit_attempts_total",
    "k2_iceberg_commit_failures_total",
    "k2_iceberg_commit_duration_seconds_sum",
    "k2_iceberg_commit_duration_seconds_count",
)
CATALOG_TIMEOUT_S = 30.0
"""K2_CATALOG_TIMEOUT_S of the workers and the driver: the REST catalog shares two busy cores with everything."""
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rest_catalog_properties() -> dict[str, str]:
    """pyiceberg's properties for the local stack's REST catalog over its S3 (``K2_REST_PORT``, ``K2_S3_PORT``)."""
    return {
        "type": "rest",
        "uri": f"http://127.0.0.1:{os.environ.get('K2_REST_PORT', '8181')}",
        "s3.endpoint": f"http://127.0.0.1:{os.environ.get('K2_S3_PORT', '9000')}",
        "s3.access-key-id": "test",
        "s3.secret-access-key": "test",
        "s3.region": "us-east-1",
        "s3.path-style-access": "true",
    }


def pyiceberg_env(properties: Mapping[str, str], name: str = "k2") -> dict[str, str]:
    """The same properties as pyiceberg's ``PYICEBERG_CATALOG__<NAME>__<KEY>`` variables."""
    prefix = f"PYICEBERG_CATALOG__{name.upper()}__"
    return {prefix + k.upper().replace(".", "__").replace("-", "_"): v for k, v in properties.items()}


@dataclass
class RestK2(K2):
    """K2's workers on the REST catalog, over topics of ``partitions`` partitions; its tables purged first."""

    catalog_properties: dict[str, str] = field(default_factory=rest_catalog_properties)
    partitions: int = 12

    def env(self, port: int) -> dict[str, str]:
        return (
            super().env(port)
            | pyiceberg_env(self.catalog_properties)
            | {
                "K2_TRADES_PARTITIONS": str(self.partitions),
                "K2_QUOTES_PARTITIONS": str(self.partitions),
                "K2_CATALOG_TIMEOUT_S": str(CATALOG_TIMEOUT_S),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )

    def prepare(self) -> None:
        catalog = self.catalog()
        from k2.lake.schemas import TABLES

        for name in TABLES:  # the REST catalog outlives the run: every count of workers starts from empty tables
            with contextlib.suppress(NoSuchTableError, NoSuchNamespaceError):
                catalog.purge_table(name)
        super().prepare()

    def catalog(self) -> Catalog:
        properties = bounded(dict(self.catalog_properties), CATALOG_TIMEOUT_S)
        return BoundedRestCatalog("k2", **{k: str(v) for k, v in properties.items()})

    def view(self, port: int, path: str) -> str:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            body: str = response.read().decode()
            return body


# --------------------------------------------------------------------------- pure parts


def instruments_for(events: float, least: int = 12) -> int:
    """Instruments per company so that one pass of the sample sends about ``events`` (at least ``least``).

    One pass, not several: the run lasts about ``--seconds`` whatever the rate, and each worker
    holds about as many symbols (sequence state) at every count of workers.
    """
    return max(least, math.ceil(events / EVENTS_PER_PASS))


def replay_plan(events: float, instruments: int | None = None) -> tuple[int, int]:
    """``(passes, instruments per company)`` of the sample that send about ``events``.

    By default one pass of as many instruments as that takes (:func:`instruments_for`), so a
    longer run also holds more symbols. With ``instruments`` fixed (``--instruments``), the
    symbols stay the same whatever the run's length and the passes make up the events: runs of
    different lengths are then the same workload per key. A pass cannot be cut short, so fixed
    instruments whose one pass sends more than ``events`` (by a tenth) are a ValueError that
    says what would fit.
    """
    if instruments is None:
        return 1, instruments_for(events)
    one_pass = EVENTS_PER_PASS * instruments
    if one_pass > 1.1 * events:
        raise ValueError(
            f"one pass of {instruments} instruments per company sends {one_pass:,} events, more than this run's "
            f"{events:,.0f}: give at most {int(events // EVENTS_PER_PASS)} instruments, or a run "
            f"{one_pass / events:.1f} times as long"
        )
    return passes_for(events, instruments), instruments


def settled(views: Sequence[Mapping[str, Any]], topics_: Sequence[str], partitions: int) -> bool:
    """Every partition of ``topics_`` held by exactly one worker and consuming; every worker holds some.

    ``views`` are the workers' ``/k2/partitions`` answers.
    """
    seen: list[tuple[str, int]] = []
    for view in views:
        mine = [(p["topic"], p["partition"]) for p in view["partitions"] if p["topic"] in topics_]
        if not mine and len(views) <= partitions * len(topics_):
            return False
        if any(p["phase"] != "consuming" for p in view["partitions"] if p["topic"] in topics_):
            return False
        seen += mine
    return sorted(seen) == sorted((t, p) for t in topics_ for p in range(partitions))


def metric_totals(text: str, names: Sequence[str] = METRICS) -> dict[str, float]:
    """Each of ``names`` summed over its labels, from a Prometheus exposition (0 when absent)."""
    out = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]  # fmt: skip


def commit_steps(before: Sequence[str], after: Sequence[str]) -> dict[str, Any]:
    """Where a commit's time went over the window, from the workers' ``/metrics`` at both ends (all tables).

    ``steps_ms``: mean milliseconds per commit of each step (``k2_iceberg_commit_step_seconds``);
    ``commit_p99_le_s``: the histogram bucket (upper bound) that holds the 99th percentile of a
    table's commit (``k2_iceberg_commit_duration_seconds``); ``oldest_event``: per commit, the mean
    and the p99 bucket of the oldest event's age since produced (``k2_commit_oldest_event_age_seconds``)
    and of its wait in the worker (``..._wait_seconds``). ``None`` where nothing was committed.
    """
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for sign, texts in ((-1.0, before), (1.0, after)):
        for text in texts:
            for labels, value in _samples(text, "k2_iceberg_commit_step_seconds_sum"):
                sums[labels["step"]] = sums.get(labels["step"], 0.0) + sign * value
            for labels, value in _samples(text, "k2_iceberg_commit_step_seconds_count"):
                counts[labels["step"]] = counts.get(labels["step"], 0.0) + sign * value
    steps = {step: round(sums[step] / counts[step] * 1000, 1) for step in sums if counts.get(step)}
    _, _, p99 = _histogram_window(before, after, "k2_iceberg_commit_duration_seconds")
    oldest: dict[str, float | None] = {}
    for what in ("age", "wait"):
        total, n, bucket = _histogram_window(before, after, f"k2_commit_oldest_event_{what}_seconds")
        oldest[f"{what}_mean_s"] = round(total / n, 3) if n else None
        oldest[f"{what}_p99_le_s"] = bucket
    return {"steps_ms": steps, "commit_p99_le_s": p99, "oldest_event": oldest}


def _histogram_window(before: Sequence[str], after: Sequence[str], name: str) -> tuple[float, float, float | None]:
    """A histogram's sum and count over the window (every worker, every label), and the bucket holding its p99."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    for sign, texts in ((-1.0, before), (1.0, after)):
        for text in texts:
            total += sign * sum(value for _, value in _samples(text, f"{name}_sum"))
            count += sign * sum(value for _, value in _samples(text, f"{name}_count"))
            for labels, value in _samples(text, f"{name}_bucket"):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sign * value
    seen_all = buckets.get(float("inf"), 0.0)
    p99 = next((le for le, seen in sorted(buckets.items()) if seen >= 0.99 * seen_all), None) if seen_all else None
    return total, count, p99


def per_worker(
    cpu: Sequence[tuple[float, float]], before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]]
) -> list[dict[str, Any]]:
    """Per worker, from its CPU seconds (start, end) and its metrics at both ends: events, CPU s, CPU s/M."""
    out = []
    for (cpu0, cpu1), m0, m1 in zip(cpu, before, after, strict=True):
        events = m1["k2_events_consumed_total"] - m0["k2_events_consumed_total"]
        used = cpu1 - cpu0
        out.append(
            {
                "events": int(events),
                "cpu_s": round(used, 2),
                "cpu_s_per_million": round(used / events * 1e6, 1) if events else None,
            }
        )
    return out


# --------------------------------------------------------------------------- measuring


def _busy_jiffies() -> int:
    """Jiffies every CPU of the machine spent not idle (user, nice, system, irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # idle, iowait


def stack_pids() -> dict[str, int]:
    """The local stack's broker, REST catalog and S3 (each leads its own session), from ``var/run/*.pid``."""
    out = {}
    for name in ("kafka", "rest", "s3"):
        with contextlib.suppress(OSError, ValueError):
            out[name] = int((ROOT / "var" / "run" / f"{name}.pid").read_text().strip())
    return out


def _worker_views(system: RestK2) -> list[dict[str, Any]]:
    return [json.loads(system.view(port, "/k2/partitions")) for port in system.ports]


def measure(system: RestK2, args: argparse.Namespace, flush_s: float) -> dict[str, Any]:
    """One count of workers, one flush interval: start, settle, produce, land, measure, stop."""
    n = system.workers
    source = system.source
    system.prepare()
    system.start()
    wait_until(f"{n} worker(s) ready", system.ready, args.timeout, alive=[system.check], poll_s=1.0)
    wait_until(
        f"{n} worker(s) settled on {args.partitions} partitions per topic",
        lambda: settled(_worker_views(system), source.market, args.partitions),
        args.timeout,
        alive=[system.check],
        poll_s=1.0,
    )
    time.sleep(3)
    loadavg = list(os.getloadavg())
    rate = args.rate_per_worker * n
    system.meter.sample()
    leaders = [proc.pid for proc in system.procs]
    cpu0 = [system.meter.cpu_s_of(pid) for pid in leaders]
    texts_before = [system.view(port, "/metrics") for port in system.ports]
    before = [metric_totals(text) for text in texts_before]
    gen0 = [v["generation"] for v in _worker_views(system)]
    stack = stack_pids()
    services = Meter(sessions=set(stack.values()))
    services.sample()
    services_cpu0 = {name: services.cpu_s_of(pid) for name, pid in stack.items()}
    busy0, t0 = _busy_jiffies(), time.time()
    passes, instruments = replay_plan(rate * args.seconds, args.instruments)
    produce = [*replay_args(passes, instruments), "--rate", f"{rate:g}"]
    log(f"{n} worker(s), flush {flush_s:g} s: producing {rate:g} events/s for about {args.seconds:g} s")
    with SnapshotTimes(system.catalog(), [TRADES_TABLE, QUOTES_TABLE]) as times:  # expiry may run meanwhile
        k2_command(produce, loader_env(source, system.workdir / "load", args.partitions), args.seconds * 4 + 300)
        produced_s = time.time() - t0
        system.ends = end_offsets(source)
        wait_landed(system, "events", args.timeout)
        busy1, t1 = _busy_jiffies(), time.time()
    system.meter.sample()
    services.sample()
    cpu1 = [system.meter.cpu_s_of(pid) for pid in leaders]
    texts_after = [system.view(port, "/metrics") for port in system.ports]
    after = [metric_totals(text) for text in texts_after]
    gen1 = [v["generation"] for v in _worker_views(system)]
    system.stop()

    catalog = system.catalog()
    t0_ms, t1_ms = int(t0 * 1000), int(t1 * 1000)
    workers = per_worker(list(zip(cpu0, cpu1, strict=True)), before, after)
    delta = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in METRICS}
    events = sum(w["events"] for w in workers)
    cpu_s = sum(w["cpu_s"] for w in workers)
    per_event = [w["cpu_s_per_million"] for w in workers if w["cpu_s_per_million"] is not None]
    window_s = max(1e-9, t1 - t0)
    commits = delta["k2_iceberg_commit_duration_seconds_count"]
    market = [Lineage(TRADES_TABLE, source.trades), Lineage(QUOTES_TABLE, source.quotes)]
    return {
        "workers": n,
        "flush_interval_s": flush_s,
        "loadavg_start": loadavg,
        "rate": rate,
        "instruments": instruments,
        "passes": passes,
        "events": system.total,
        "produced_s": round(produced_s, 1),
        "window_s": round(t1 - t0, 1),
        "machine_busy_cores": round((busy1 - busy0) / TICKS / window_s, 2),
        "rebalances": max(g1 - g0 for g0, g1 in zip(gen0, gen1, strict=True)),
        "tables": commit_stats({t: list(seen.values()) for t, seen in times.summaries.items()}, t0_ms, t1_ms),
        "commits": {
            "flushes": int(delta["k2_flushes_total"]),
            "attempts": int(delta["k2_iceberg_commit_attempts_total"]),
            "retries": int(delta["k2_iceberg_commit_attempts_total"] - delta["k2_flushes_total"]),
            "failures": int(delta["k2_iceberg_commit_failures_total"]),
            "snapshots": int(commits),
            "mean_commit_s": round(delta["k2_iceberg_commit_duration_seconds_sum"] / commits, 3) if commits else None,
        }
        | commit_steps(texts_before, texts_after),
        "freshness": freshness(
            catalog,
            market,
            produced_times(source.broker, system.ends),
            t0_ms + int(args.warmup * 1000),
            known=times.commit_ms,
        ),
        "cpu": {
            "s_per_million": round(cpu_s / events * 1e6, 1) if events else None,
            "worker_min_s_per_million": min(per_event, default=None),
            "worker_max_s_per_million": max(per_event, default=None),
            "per_worker": workers,
        },
        "services_cores": {
            name: round((services.cpu_s_of(pid) - services_cpu0[name]) / window_s, 2) for name, pid in stack.items()
        },
    } | exactness(catalog, system.lineages(), system.ends)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,3,6", help="counts of workers, comma separated")
    parser.add_argument("--flush-interval", default="5", help="K2_FLUSH_INTERVAL_S, s; several comma separated")
    parser.add_argument("--partitions", type=int, default=12, help="partitions per market topic")
    parser.add_argument("--rate-per-worker", type=float, default=500, help="events/s produced per worker")
    parser.add_argument("--seconds", type=float, default=120, help="about how long to produce, s")
    parser.add_argument(
        "--instruments",
        type=int,
        help="instruments per company, fixed (default: one pass of as many as --seconds takes, so longer runs "
        "hold more symbols)",
    )
    parser.add_argument("--warmup", type=float, default=10, help="events of the first N s not counted in freshness")
    parser.add_argument("--timeout", type=float, default=600, help="bound of every wait, s")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/scaleout/<date>.json)")
    parser.add_argument("--readme", action="store_true", help="regenerate README's Performance section with it")
    parser.add_argument("--keep", action="store_true", help="keep the work folders and topics")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    flushes = [float(f) for f in args.flush_interval.split(",") if f.strip()]
    if not counts or min(counts) < 1 or not flushes or min(flushes) <= 0:
        parser.error("--workers and --flush-interval take positive numbers, comma separated")
    if args.instruments is not None:
        try:
            replay_plan(args.rate_per_worker * min(counts) * args.seconds, args.instruments)
        except ValueError as exc:
            parser.error(f"--instruments {args.instruments} at --seconds {args.seconds:g}: {exc}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = uuid.uuid4().hex[:8]
    work = ROOT / "var" / "bench" / "scaleout" / run
    prefix = f"scale{run}"
    began = time.time()
    results: dict[str, Any] = {
        **provenance.header(run),
        "config": {
            "workers": counts,
            "flush_intervals_s": flushes,
            "partitions": args.partitions,
            "rate_per_worker": args.rate_per_worker,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "catalog": "rest",
        },
        "runs": [],
    }
    out = args.out or scaleout_report.RESULTS / f"{results['date']}.json"
    failed = False
    for flush_s in flushes:
        for n in counts:
            tag = f"n{n}f{flush_s:g}".replace(".", "_")
            source = topics(f"{prefix}.{tag}")
            system = RestK2("k2", source, {}, work / tag, flush_s, workers=n, partitions=args.partitions)
            try:
                figures = measure(system, args, flush_s)
            except Exception as exc:  # this count's figures, not the run's: said, and the next count measured
                failed = True
                log(f"{n} worker(s), flush {flush_s:g} s FAILED: {type(exc).__name__}: {exc}")
                figures = {"workers": n, "flush_interval_s": flush_s, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                system.stop()
            log(f"{n} worker(s), flush {flush_s:g} s: {json.dumps(figures)}")
            results["runs"].append(figures)
            results["duration_s"] = round(time.time() - began, 1)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    results["goal"] = scaleout_report.goal(results)
    results["duration_s"] = round(time.time() - began, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(scaleout_report.table(results))
    print()
    log(f"results in {out} ({results['duration_s'] / 60:.1f} min)")
    if args.readme and not failed:
        from bench import report

        newest = report.newest(required=False)
        if newest is None:
            log("README.md not regenerated: no `make bench` results to put beside these")
        else:
            report.update_readme(json.loads(newest.read_text()), scaleout=results)
            log(f"README.md: Performance section regenerated (with {newest.name})")
    if not args.keep:
        if failed:
            log(f"kept {work} (something failed)")
        else:
            shutil.rmtree(work, ignore_errors=True)
        for problem in delete_topics(topics(prefix).broker, prefix):
            log(problem)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
