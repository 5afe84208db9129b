"""The deploy files are valid for the tools that read them, and agree with the metrics K2 exports.

``promtool`` (Debian's ``prometheus`` package; ``make system-deps`` installs it) checks the
Prometheus configurations and alert rules, and runs the rules' own unit tests
(``alerts.test.yml``). Compose and Grafana files are parsed, and every path and metric
they name must exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from k2.metrics import K2Metrics
from k2.web.prometheus import faust_metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
COMPOSE = ROOT / "docker-compose.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make system-deps` installs Debian's prometheus package"
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.docker.yml"])
def test_prometheus_configs_pass_promtool(config: str) -> None:
    out = promtool("check", "config", config)
    assert "1 rule files found" in out


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool("check", "rules", "alerts.yml")
    promtool("test", "rules", "alerts.test.yml")


def test_required_alerts_exist() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "k2_iceberg_last_commit_age_seconds > 300" in alerts["K2IcebergNoCommit"]
    assert "k2_lake_lag" in alerts["K2LakeLagHigh"]
    assert "k2_events_rejected_total" in alerts["K2RejectRateHigh"]
    assert alerts["K2WorkerDown"].strip() == 'up{job="k2-worker"} == 0'


def test_both_prometheus_configs_scrape_the_same_job_with_the_same_rules() -> None:
    local = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    docker = yaml.safe_load((PROMETHEUS / "prometheus.docker.yml").read_text())
    assert local["rule_files"] == docker["rule_files"] == ["alerts.yml"]
    assert [j["job_name"] for j in local["scrape_configs"]] == [j["job_name"] for j in docker["scrape_configs"]]
    assert docker["scrape_configs"][0]["static_configs"][0]["targets"] == ["k2-worker:6066"]


# -- docker-compose.yml ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def host_paths(service: dict[str, Any]) -> list[str]:
    """Host-side paths a service names: bind mounts (short and long syntax), build contexts, env files."""
    paths = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            paths.append(source)
    build = service.get("build")
    if build is not None:
        context = build if isinstance(build, str) else build.get("context", ".")
        paths.append(context)
        paths.append(
            str(Path(context) / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"))
        )
    env_file = service.get("env_file", [])
    paths.extend([env_file] if isinstance(env_file, str) else env_file)
    return paths


def test_compose_parses_and_every_path_it_references_exists() -> None:
    services = compose()["services"]
    checked = 0
    for name, service in services.items():
        for path in host_paths(service):
            assert (ROOT / path).exists(), f"service {name} references {path}, which does not exist"
            checked += 1
        for dep in service.get("depends_on", []):
            assert dep in services, f"service {name} depends on unknown service {dep}"
    assert checked >= 6


def test_compose_wires_prometheus_and_grafana_to_the_deploy_files() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    assert "./deploy/prometheus/prometheus.docker.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom["volumes"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "6066:6066" in services["k2-worker"]["ports"]


# -- Grafana ---------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "k2.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exported_names() -> set[str]:
    """Every sample name K2's /metrics can expose (K2's metrics and faust's), plus Prometheus' own ``up``."""
    registry = CollectorRegistry()
    K2Metrics(registry)
    faust_metrics(registry)
    names = {"up"}
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return names


def test_grafana_datasource_is_the_one_the_dashboard_uses() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    assert uids == {source["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "k2.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_covers_what_on_call_needs() -> None:
    exprs = "\n".join(dashboard_exprs())
    for metric in (
        "k2_events_consumed_total",  # throughput
        "k2_rows_written_total",
        "k2_consumer_lag",
        "k2_lake_lag",
        "k2_iceberg_last_commit_age_seconds",
        "k2_events_rejected_total",  # rejects by reason
        "k2_buffered_rows",
        "k2_iceberg_commit_duration_seconds_bucket",
    ):
        assert metric in exprs, f"the dashboard does not show {metric}"
    assert "reason" in exprs
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_is_exported(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    queried = {m for e in exprs for m in re.findall(r"\b(k2_[a-z0-9_]+|up)\b(?=\s*[{\[)\s])", e + " ")}
    assert queried, "no metric found in the expressions"
    missing = queried - exported_names()
    assert not missing, f"{source} queries metrics K2 does not export: {sorted(missing)}"
