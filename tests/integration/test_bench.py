"""`bench/compare.py` in its short version: it runs, measures every figure, and K2 lands each event once.

The benchmark's own harness is under test here (the full comparison is `make bench`): a
small load, the floor, the bare Faust agent and one K2 worker, no kill and no freshness
phase. It fails when the script fails, when a figure is absent or meaningless, or when K2
lost or doubled a (topic, partition, offset).
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
    cmd += ["--instruments", "4", "--no-kill", "--no-freshness", "--no-soak"]
    cmd += ["--timeout", "300", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"compare.py exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    results = json.loads(out.read_text())
    assert results["config"]["events"] >= 20_000
    assert results["config"]["partitions"] == 6 and results["config"]["instruments"] == 4
    assert {"nproc", "ram_gib", "cpu", "python"} <= set(results["machine"])
    assert {"faust-streaming", "aiokafka", "pyiceberg"} <= set(results["versions"]["python"])
    assert list(results["systems"]) == list(SYSTEMS)
    for name in SYSTEMS:
        figures = results["systems"][name]
        assert "error" not in figures, f"{name}: {figures['error']}"
        assert figures["events"] == results["config"]["events"]
        for key in FIGURES:
            assert figures[key] > 0, f"{name}: {key} = {figures[key]}"
    k2 = results["systems"]["k2"]
    for key in LAKE_FIGURES:
        assert key in k2, key
    assert k2["data_files"] > 0 and k2["avg_file_mb"] > 0
    assert k2["rows"] == results["config"]["events"]
    assert k2["missing"] == k2["doubled"] == k2["outside_kafka"] == 0, k2
    for table, m in k2["maintenance"].items():  # k2 maintain on the lake the load landed in
        assert m["files_after"] <= m["files_before"] and m["day_rows"] > 0, (table, m)
        assert m["day_scan_s_before"] > 0 and m["day_scan_s_after"] > 0
    assert "k2" in done.stdout and "ev/s steady" in done.stdout  # the table was printed
