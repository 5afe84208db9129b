"""Observability end to end: a worker on the local stack, scraped by a real Prometheus, and its views.

The story, in one module-scoped run:

1. worker A consumes the bundled sample but never flushes (flush interval of an hour): the
   rows sit in its buffer tables and changelogs, the lake lag equals what was replayed;
2. A is killed (SIGKILL); worker B starts with a one-second flush interval, restores the
   buffers from the changelogs (faust's table recovery) and lands them;
3. B's views are polled from the moment its web server answers until it is ready, so the
   not-ready answers of a worker that is still joining or recovering are seen and checked;
4. Prometheus (its own process, scraping every second) must then agree: rows written equal
   rows replayed, lake lag back to zero after having been the whole sample, a fresh commit.

Expectations are counted from the CSV files, independently of K2.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.k2env import ROOT, K2Env, Worker
from tests.integration.law import assert_law
from tests.integration.prom import Prometheus, http_get

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
MARKET_TABLES = ("market_data.trades", "market_data.quotes", "reference_data.companies")
VERSIONS = "reference_data.company_versions"


def sample_counts() -> dict[str, int]:
    """Rows per source kind, straight from the CSV files (no header in trades/quotes, one in reference data)."""
    counts = {}
    for kind in ("trades", "quotes"):
        counts[kind] = sum(sum(1 for _ in csv.reader(p.open(newline=""))) for p in (SAMPLE / kind).glob("*.csv"))
    with (SAMPLE / "reference-data" / "company_info.csv").open(newline="") as f:
        counts["reference"] = sum(1 for _ in csv.DictReader(f))
    return counts


def get_json(worker: Worker, path: str) -> tuple[int, Any]:
    status, ctype, body = http_get(f"http://127.0.0.1:{worker.port}{path}")
    assert ctype.startswith("application/json"), f"{path}: {status} {ctype} {body[:300]}"
    return status, json.loads(body)


# -- the documented shapes --------------------------------------------------------------------------

LAG_KEYS = {
    "topic",
    "partition",
    "end_offset",
    "committed_offset",
    "lake_offset",
    "consumer_lag",
    "lake_lag",
    "open_transaction",
}
PARTITION_KEYS = {
    "topic",
    "partition",
    "phase",
    "generation",
    "in_phase_s",
    "since_assignment_s",
    "waiting_for",
    "attempts",
    "overdue",
    "stopped",
}
TABLE_KEYS = {
    "table",
    "exists",
    "snapshot_id",
    "committed_at",
    "commit_age_seconds",
    "rows",
    "offsets",
    "buffered_rows",
}


def check_lag(body: Any) -> None:
    assert set(body) == {"partitions", "total"}
    assert set(body["total"]) == {"consumer_lag", "lake_lag"}
    for row in body["partitions"]:
        assert set(row) == LAG_KEYS
        assert row["end_offset"] >= 0 and row["consumer_lag"] >= 0 and row["lake_lag"] >= 0
        assert row["committed_offset"] is None or row["committed_offset"] <= row["end_offset"]
    assert body["total"]["lake_lag"] == sum(r["lake_lag"] for r in body["partitions"])


def check_ready(status: int, body: Any) -> None:
    assert status in (200, 503)
    assert set(body) == {"ready", "failed", "checks"}
    assert set(body["checks"]) == {
        "partitions",
        "recovery",
        "ingest",
        "progress",
        "kafka",
        "catalog",
        "registry",
        "sink",
    }
    assert body["ready"] is (status == 200)
    assert body["failed"] == [name for name, check in body["checks"].items() if not check["ok"]]
    for check in body["checks"].values():
        assert set(check) == {"ok", "detail"} and isinstance(check["detail"], str) and check["detail"]


def check_tables(body: Any) -> None:
    assert set(body) == {"tables"}
    assert {t["table"] for t in body["tables"]} >= set(MARKET_TABLES)
    for t in body["tables"]:
        assert set(t) == TABLE_KEYS


def by_table(body: Any) -> dict[str, Any]:
    return {t["table"]: t for t in body["tables"]}


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Run:
    env: K2Env
    prom: Prometheus
    worker: Worker
    replayed: int
    #: /k2/lag and /k2/tables of worker A with the whole sample buffered and nothing landed.
    buffered_lag: Any = None
    buffered_tables: Any = None
    #: (seconds since B's process started, view, status, body) while B came up.
    startup: list[tuple[float, str, int, Any]] = field(default_factory=list)


def wait_view(worker: Worker, path: str, accept: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    body = None
    while time.monotonic() < deadline:
        status, body = get_json(worker, path)
        if status == 200 and accept(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{path} never satisfied the condition; last: {body}\n{worker.tail()}")


VIEWS = ("/k2/ready", "/k2/lag", "/k2/health", "/k2/partitions")


def watch_startup(worker: Worker, run: Run, timeout_s: float = 120.0) -> None:
    """Poll B's views from the first answer of its web server until /k2/ready says 200."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited {worker.proc.returncode}:\n{worker.tail()}")
        answers = []
        try:
            for path in VIEWS:
                status, body = get_json(worker, path)
                answers.append((time.monotonic() - started, path, status, body))
        except OSError:  # the web server is not listening yet
            time.sleep(0.05)
            continue
        run.startup.extend(answers)
        if any(p == "/k2/ready" and s == 200 for _, p, s, _ in answers):
            return
        time.sleep(0.05)
    last = run.startup[-len(VIEWS) :]
    raise AssertionError(f"worker not ready after {timeout_s}s; last answers: {last}\n{worker.tail()}")


@pytest.fixture(scope="module")
def run(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("observability")
    env = K2Env(stack, tmp, "sqlite", K2_FLUSH_INTERVAL_S="3600")
    prom = Prometheus(tmp, [f"127.0.0.1:{env.env['K2_WEB_PORT']}"])
    counts = sample_counts()
    replayed = sum(counts.values())
    try:
        env.k2("init")
        a = env.start_worker()
        env.k2("replay", str(SAMPLE), "--no-progress")
        result = Run(env, prom, a, replayed)
        # Everything consumed and committed by the group, everything buffered, nothing landed.
        # (reference data waits for two tables, companies and company_versions: counted once)
        result.buffered_tables = wait_view(
            a,
            "/k2/tables",
            lambda b: sum(t["buffered_rows"] for t in b["tables"] if t["table"] != VERSIONS) == replayed,
        )
        # faust commits the group's offsets some time after the last batch (over a minute
        # has been seen after a burst): the lake can be ahead of the group, never behind.
        result.buffered_lag = wait_view(a, "/k2/lag", lambda b: b["total"]["consumer_lag"] == 0, timeout_s=240)
        prom.wait_for("sum(k2_lake_lag)", lambda v: v == replayed)

        a.crash()
        env.env["K2_FLUSH_INTERVAL_S"] = "1"
        result.worker = env.start_worker(wait=False)
        watch_startup(result.worker, result)
        env.wait_landed()
        yield result
    finally:
        env.close()
        prom.stop()


# -- worker A: buffered, not landed ----------------------------------------------------------------


def test_buffered_rows_show_as_lake_lag_not_consumer_lag(run: Run) -> None:
    check_lag(run.buffered_lag)
    check_tables(run.buffered_tables)
    assert run.buffered_lag["total"] == {"consumer_lag": 0, "lake_lag": run.replayed}
    for row in run.buffered_lag["partitions"]:
        assert row["lake_offset"] is None
        assert row["committed_offset"] == row["end_offset"] or row["end_offset"] == 0
    tables = by_table(run.buffered_tables)
    counts = sample_counts()
    assert tables["market_data.trades"]["buffered_rows"] == counts["trades"]
    assert tables["market_data.quotes"]["buffered_rows"] == counts["quotes"]
    assert all(tables[t]["snapshot_id"] is None and tables[t]["rows"] == 0 for t in MARKET_TABLES)


# -- worker B: coming up, recovering, ready --------------------------------------------------------


def test_views_answer_with_their_shapes_while_the_worker_comes_up(run: Run) -> None:
    assert run.startup, "worker B's web server never answered"
    ready_seen = [(round(t, 2), s, body["failed"]) for t, p, s, body in run.startup if p == "/k2/ready"]
    print("readiness while worker B came up (seconds, status, failed checks):", ready_seen)
    for _, path, status, body in run.startup:
        if path == "/k2/ready":
            check_ready(status, body)
        elif path == "/k2/lag":
            assert status == 200
            check_lag(body)
        elif path == "/k2/partitions":
            assert status == 200 and set(body) == {"generation", "partitions"}
            assert all(set(row) == PARTITION_KEYS for row in body["partitions"])
        else:
            assert (status, body["status"]) == (200, "alive")
    not_ready = [(t, body["failed"]) for t, p, s, body in run.startup if p == "/k2/ready" and s == 503]
    # The web server answers before the group has assigned partitions and the buffer tables
    # are restored: readiness must say so (liveness stays 200 all along).
    assert not_ready, f"never saw a not-ready answer: {[(t, p, s) for t, p, s, _ in run.startup][:10]}"
    assert {name for _, failed in not_ready for name in failed} & {"partitions", "recovery"}
    first_ready = next(t for t, p, s, _ in run.startup if p == "/k2/ready" and s == 200)
    assert all(t <= first_ready for t, _ in not_ready)


def test_ready_once_recovered_with_every_check_passing(run: Run) -> None:
    status, body = get_json(run.worker, "/k2/ready")
    check_ready(status, body)
    assert status == 200 and body["failed"] == []
    assert "restored" in body["checks"]["recovery"]["detail"]
    status, held = get_json(run.worker, "/k2/partitions")
    assert status == 200 and held["partitions"]
    assert {row["phase"] for row in held["partitions"]} == {"consuming"}
    assert all(row["overdue"] is None and row["since_assignment_s"] >= row["in_phase_s"] for row in held["partitions"])


def test_restored_buffers_land_and_lag_is_zero(run: Run) -> None:
    status, lag = get_json(run.worker, "/k2/lag")
    assert status == 200
    check_lag(lag)
    assert lag["total"] == {"consumer_lag": 0, "lake_lag": 0}
    for row in lag["partitions"]:
        if row["end_offset"]:
            assert row["lake_offset"] == row["end_offset"] - 1

    status, tables = get_json(run.worker, "/k2/tables")
    assert status == 200
    check_tables(tables)
    rows = by_table(tables)
    counts = sample_counts()
    assert rows["market_data.trades"]["rows"] == counts["trades"]
    assert rows["market_data.quotes"]["rows"] == counts["quotes"]
    assert rows["reference_data.companies"]["rows"] == counts["reference"]
    for name in MARKET_TABLES:
        t = rows[name]
        assert t["buffered_rows"] == 0 and t["snapshot_id"] is not None
        assert 0 <= t["commit_age_seconds"] < 120
        assert t["offsets"], f"{name} records no offsets"


def test_the_law_holds_after_the_crash_and_restore(run: Run) -> None:
    assert_law(run.env)


def test_lag_as_text_is_an_aligned_table(run: Run) -> None:
    status, ctype, text = http_get(f"http://127.0.0.1:{run.worker.port}/k2/lag?format=text")
    assert status == 200 and ctype.startswith("text/plain")
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["topic", "partition"]
    assert len({len(line) for line in lines}) == 1, text
    assert lines[-1].split() == ["total", "0", "0"]
    topics = {line.split()[0] for line in lines[2:-2]}
    assert topics == set(run.env.settings.source_topics)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/k2/nope", 404, "no such view: /k2/nope"),
        ("/k2/lag/extra", 404, "no such view"),
        ("/k2/lag?format=xml", 400, "format='xml'"),
        ("/k2/lag?topic=x", 400, "unknown query parameter 'topic'"),
        ("/k2/tables?x=1", 400, "unknown query parameter"),
        ("/k2/health?verbose=1", 400, "unknown query parameter"),
    ],
)
def test_bad_paths_and_parameters_answer_json_errors(run: Run, path: str, status: int, error: str) -> None:
    got, body = get_json(run.worker, path)
    assert got == status and error in body["error"]
    assert "Traceback" not in json.dumps(body)


def test_faust_performance_view_answers(run: Run) -> None:
    status, body = get_json(run.worker, "/performance/")
    assert status == 200
    assert {"throughput", "latency", "consumer"} <= set(body)


# -- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_sees_rows_written_equal_rows_replayed(run: Run) -> None:
    p = run.prom
    counts = sample_counts()
    p.wait_for("sum(k2_rows_written_total)", lambda v: v == run.replayed + counts["reference"])
    written = {r["metric"]["table"]: float(r["value"][1]) for r in p.query("sum by (table) (k2_rows_written_total)")}
    assert written == {
        "market_data.trades": counts["trades"],
        "market_data.quotes": counts["quotes"],
        "reference_data.companies": counts["reference"],
        VERSIONS: counts["reference"],
        "market_data.rejects": 0,
        "market_data.sequence_gaps": 0,
    }
    # Worker A consumed everything (its counters, scraped before the crash, are in the TSDB).
    assert p.scalar("sum(max_over_time(k2_events_consumed_total[10m]))") == run.replayed
    assert p.scalar("sum(max_over_time(k2_events_accepted_total[10m]))") == run.replayed
    assert p.scalar("sum(k2_events_rejected_total)") is None  # no reject, no series
    assert p.scalar("sum(k2_buffered_rows)") == 0


def test_prometheus_sees_lake_lag_fall_to_zero_and_a_fresh_commit(run: Run) -> None:
    p = run.prom
    p.wait_for("sum(k2_lake_lag)", lambda v: v == 0)
    assert p.scalar("sum(max_over_time(k2_lake_lag[10m]))") == run.replayed  # the whole sample, while buffered
    assert p.scalar("sum(k2_consumer_lag)") == 0
    ages = {r["metric"]["table"]: float(r["value"][1]) for r in p.query("k2_iceberg_last_commit_age_seconds")}
    assert set(ages) >= set(MARKET_TABLES)
    assert all(0 <= ages[t] < 120 for t in MARKET_TABLES), ages
    assert p.scalar('max(k2_iceberg_commit_duration_seconds_count{table="market_data.trades"})') == 1
    assert p.scalar("sum(k2_iceberg_commit_failures_total)") == 0
    # A worker was killed: Prometheus saw its target down, and up again.
    assert p.scalar('min_over_time(up{job="k2-worker"}[10m])') == 0
    assert p.scalar('up{job="k2-worker"}') == 1


def test_every_dashboard_and_alert_expression_runs_on_prometheus(run: Run) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "k2.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs = [re.sub(r'(job|instance)=~"\$\w+"', r'\1=~".*"', e) for e in exprs]
    # Every query must be accepted; those over gauges must show data for a worker that just
    # landed the sample (rates and ratios may be empty, depending on where the 1-5 min windows fall).
    gauges = ("up{", "k2_lake_lag{", "k2_consumer_lag{", "k2_buffered_rows{", "k2_iceberg_last_commit_age_seconds{")
    for expr in exprs:
        result = run.prom.query(expr)  # raises on a query Prometheus rejects
        if "rate(" not in expr and any(g in expr for g in gauges):
            assert result, f"no data for {expr}"
    rules = run.prom.api("rules")
    loaded = [r for g in rules["groups"] for r in g["rules"]]
    written = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    names = sorted(r["alert"] for g in written["groups"] for r in g["rules"])
    assert sorted(r["name"] for r in loaded) == names, loaded
    assert all(r["health"] == "ok" for r in loaded), loaded
    firing = [a["labels"]["alertname"] for r in loaded for a in r.get("alerts", []) if a["state"] == "firing"]
    assert firing == [], firing


def test_live_exposition_passes_promtool(run: Run) -> None:
    status, ctype, text = http_get(f"http://127.0.0.1:{run.worker.port}/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make system-deps` installs it"
    proc = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "k2_faust_messages_received_total",
        "k2_faust_events_runtime_seconds_bucket",
        "k2_events_consumed_total",
        "k2_iceberg_last_commit_age_seconds",
        "k2_consumer_lag",
        "k2_lake_lag",
    ):
        assert f"\n{name}" in text, f"{name} missing from /metrics"


def test_local_prometheus_config_targets_the_default_worker_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:6066"]
    assert Path(ROOT / "deploy" / "prometheus" / config["rule_files"][0]).exists()
