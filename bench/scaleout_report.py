"""The scale-out results (``bench/scaleout.py``) as people read them: one table, the goal, README's subsection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["GOAL", "RESULTS", "goal", "section", "table"]

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "scaleout"
GOAL = 1.2
"""Freshness p99 and CPU per event per worker at the most workers, within 20% of one worker's (issue 19)."""

COLUMNS = (
    ("flush", "flush s"),
    ("workers", "workers"),
    ("rate", "ev/s in"),
    ("snapshots", "snapshots/min per table"),
    ("files", "data files/min per table"),
    ("commits", "commits"),
    ("retries", "retries"),
    ("failures", "failed"),
    ("commit_s", "mean commit s"),
    ("fresh", "fresh p50/p99/max s"),
    ("cpu", "CPU s/M: all (workers)"),
    ("services", "cores: broker/catalog/S3"),
    ("busy", "cores: machine"),
    ("load", "load avg"),
    ("rebalances", "rebalances"),
    ("exact", "missing/doubled"),
)


def _per_table(run: Mapping[str, Any], key: str) -> str:
    return "/".join(f"{t[key]:.0f}" for t in run["tables"].values())


def row(run: Mapping[str, Any]) -> dict[str, str]:
    head = {"flush": f"{run['flush_interval_s']:g}", "workers": str(run["workers"])}
    if "error" in run:
        return head | {"rate": "error", **{k: "" for k, _ in COLUMNS[3:]}}
    fresh, cpu, commits = run["freshness"], run["cpu"], run["commits"]
    fresh_text = "-"
    if fresh.get("p50_s") is not None:
        fresh_text = f"{fresh['p50_s']:.1f}/{fresh['p99_s']:.1f}/{fresh['max_s']:.1f}"
    cpu_text = "-"
    if cpu["s_per_million"] is not None:
        low, high = cpu["worker_min_s_per_million"], cpu["worker_max_s_per_million"]
        cpu_text = f"{cpu['s_per_million']:.0f}" + ("" if run["workers"] == 1 else f" ({low:.0f}-{high:.0f})")
    cores = run.get("services_cores", {})
    services = "/".join("-" if cores.get(n) is None else f"{cores[n]:.2f}" for n in ("kafka", "rest", "s3"))
    mean_commit = commits.get("mean_commit_s")
    return head | {
        "rate": f"{run['rate']:,.0f}",
        "snapshots": _per_table(run, "snapshots_per_min"),
        "files": _per_table(run, "data_files_per_min"),
        "commits": f"{commits['snapshots']:,}",
        "retries": f"{commits['retries']:,}",
        "failures": f"{commits['failures']:,}",
        "commit_s": "-" if mean_commit is None else f"{mean_commit:.2f}",
        "fresh": fresh_text,
        "cpu": cpu_text,
        "services": services,
        "busy": f"{run['machine_busy_cores']:.2f}",
        "load": f"{run['loadavg_start'][0]:.1f}",
        "rebalances": str(run["rebalances"]),
        "exact": f"{run['missing']:,}/{run['doubled']:,}",
    }


def table(results: Mapping[str, Any], markdown: bool = False) -> str:
    lines = [row(r) for r in results["runs"]]
    if markdown:
        out = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(out + ["| " + " | ".join(r[k] for k, _ in COLUMNS) + " |" for r in lines])
    widths = {k: max(len(title), *(len(r[k]) for r in lines)) for k, title in COLUMNS}
    out = ["  ".join(title.rjust(widths[k]) for k, title in COLUMNS)]
    return "\n".join(out + ["  ".join(r[k].rjust(widths[k]) for k, _ in COLUMNS) for r in lines])


def goal(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per flush interval: the most workers' freshness p99 and CPU per event (all workers') over one worker's."""
    out = []
    good = [r for r in results["runs"] if "error" not in r]
    for flush in sorted({r["flush_interval_s"] for r in good}):
        runs = sorted((r for r in good if r["flush_interval_s"] == flush), key=lambda r: r["workers"])
        one, most = runs[0], runs[-1]
        if one["workers"] != 1 or most["workers"] == 1:
            continue
        p99 = (one["freshness"].get("p99_s"), most["freshness"].get("p99_s"))
        cpu = (one["cpu"]["s_per_million"], most["cpu"]["s_per_million"])
        if None in p99 or None in cpu:
            continue
        fresh_ratio, cpu_ratio = p99[1] / p99[0], cpu[1] / cpu[0]
        out.append(
            {
                "flush_interval_s": flush,
                "workers": most["workers"],
                "freshness_p99_ratio": round(fresh_ratio, 2),
                "cpu_per_event_ratio": round(cpu_ratio, 2),
                "met": fresh_ratio <= GOAL and cpu_ratio <= GOAL,
            }
        )
    return out


def _goal_lines(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for g in checks:
        verdict = "met" if g["met"] else "**not met**"
        out.append(
            f"- Flush {g['flush_interval_s']:g} s, {g['workers']} workers against one: freshness p99 "
            f"{g['freshness_p99_ratio']:.2f}x, CPU per event {g['cpu_per_event_ratio']:.2f}x; "
            f"the goal (both within {GOAL - 1:.0%} of one worker's) {verdict}."
        )
    return out


def section(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    m = results["machine"]
    intro = (
        f"### Scale-out\n\nMeasured {results['date']} on K2 {results.get('k2_commit', 'unknown')} by "
        f"`make bench-scaleout` (`bench/scaleout.py`) in {results['duration_s'] / 60:.0f} minutes on the same "
        f"{m['nproc']}-core machine: {', '.join(str(n) for n in cfg['workers'])} K2 workers in one group on "
        f"{cfg['partitions']} partitions per topic and the REST catalog over S3 (the local stack's `rest` profile: "
        f"Iceberg's REST catalog server and moto, on the same cores), "
        f"{cfg['rate_per_worker']:,.0f} events/s produced per worker for about {cfg['seconds']:g} s, each count of "
        "workers on fresh topics and empty tables after the group settled. The window runs from the start of "
        "production to the last event landed."
    )
    notes = f"""\
- *snapshots/min*, *data files/min*: per table (trades/quotes), the snapshots committed in the
  window and the data files they added, per minute of it. *commits*: the table commits that made
  a snapshot, counted by the workers; *retries*: attempts beyond the first
  (`k2_iceberg_commit_attempts_total` above `k2_flushes_total`: another worker committed to the
  table first); *failed*: commits that still conflicted after their retries (their rows stay
  buffered for the next flush).
- *fresh*: produced (Kafka CreateTime) -> visible (the committing snapshot's time) of the events
  produced after the first {cfg["warmup_s"]:g} s. *CPU s/M*: the workers' CPU seconds (/proc) over the
  events they consumed in the window, all of them together and (in brackets) the lowest and
  highest of a single worker: the partitions do not carry equal shares of the load, and at a few
  hundred events/s most of a worker's CPU is its fixed cost per flush interval (timers, commits),
  not the events, so compare rows with each other, not with `make bench`.
- *cores*: CPU seconds per second of the window, of the broker, the REST catalog and S3 (the
  local stack's processes), and of the whole machine (/proc/stat: everything on it, the other
  users of this shared machine included); *rebalances*: group generations during the window."""
    return "\n".join([intro, "", table(results, markdown=True), "", *_goal_lines(goal(results)), "", notes])
