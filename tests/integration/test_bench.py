"""`bench/compare.py` in its short version: rounds run, every figure is measured, and K2 lands each event once.

The benchmark's own harness is under test here (the full comparison is `make bench`): a
small load, two rounds of the floor, the bare Faust agent and one K2 worker, no kill and no
freshness phase. It fails when the script fails, when a figure is absent or meaningless in a
round or in the summary, or when K2 lost or doubled a (topic, partition, offset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("floor", "faust-bare", "k2")
FIGURES = ("events_per_s", "steady_events_per_s", "cpu_s_per_million", "rss_max_mib", "rss_sum_mib", "seconds")
LAKE_FIGURES = ("data_files", "avg_file_mb", "rows", "missing", "doubled", "outside_kafka")


def test_compare_short(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")} | {
        "K2_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "K2_SCHEMA_REGISTRY_URL": stack.schema_registry_url,
    }
    cmd = [sys.executable, str(ROOT / "bench" / "compare.py"), "--events", "20000", "--systems", ",".join(SYSTEMS)]
    cmd += ["--rounds", "2", "--once", "", "--instruments", "4", "--no-kill", "--no-freshness", "--no-soak"]
    cmd += ["--timeout", "300", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"compare.py exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    results = json.loads(out.read_text())
    events = results["config"]["events"]
    assert events >= 20_000 and results["config"]["rounds"] == 2
    assert results["config"]["partitions"] == 6 and results["config"]["instruments"] == 4
    assert {"nproc", "ram_gib", "cpu", "python"} <= set(results["machine"])
    assert {"faust-streaming", "aiokafka", "pyiceberg"} <= set(results["versions"]["python"])
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for r in results["rounds"]:
        assert list(r["systems"]) == list(SYSTEMS) and len(r["loadavg_start"]) == 3
        for name in SYSTEMS:
            figures = r["systems"][name]
            assert "error" not in figures, f"round {r['round']}, {name}: {figures['error']}"
            assert figures["events"] == events
            for key in FIGURES:
                assert figures[key] > 0, f"round {r['round']}, {name}: {key} = {figures[key]}"
        k2 = r["systems"]["k2"]
        for key in LAKE_FIGURES:
            assert key in k2, key
        assert k2["data_files"] > 0 and k2["avg_file_mb"] > 0 and k2["rows"] == events
        assert k2["missing"] == k2["doubled"] == k2["outside_kafka"] == 0, k2

    assert list(results["systems"]) == list(SYSTEMS)
    for name in SYSTEMS:
        summary = results["systems"][name]
        assert summary["rounds"] == 2 and summary["failed"] == 0
        steady = summary["figures"]["steady_events_per_s"]
        assert steady["n"] == 2 and steady["min"] <= steady["median"] <= steady["max"]
    assert results["systems"]["floor"]["vs_k2"]["steady_events_per_s"]["n"] == 2
    assert results["systems"]["k2"]["missing"] == results["systems"]["k2"]["doubled"] == 0
    assert isinstance(results["disturbed"], list)
    for table, m in results["systems"]["k2"]["maintenance"].items():  # k2 maintain on round 1's lake
        assert m["files_after"] <= m["files_before"] and m["day_rows"] > 0, (table, m)
        assert m["day_scan_s_before"] > 0 and m["day_scan_s_after"] > 0
    assert "ev/s steady" in done.stdout and "disturbed" in done.stdout  # both tables were printed
