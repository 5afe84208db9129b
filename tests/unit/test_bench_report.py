"""bench/report.py: the table and README's Performance section come from a results JSON, between markers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402


def _results() -> dict[str, Any]:
    lake = {"steady_events_per_s": 10_000, "events_per_s": 8_000, "cpu_s_per_million": 90.0, "rss_max_mib": 300.0}
    lake |= {"rss_sum_mib": 300.0, "data_files": 12, "avg_file_mb": 1.5, "missing": 0, "doubled": 0}
    return {
        "date": "2026-01-01",
        "duration_s": 600,
        "machine": {"nproc": 2, "cpu": "Test CPU", "ram_gib": 8, "python": "3.11", "java": "17", "loadavg_start": [1]},
        "versions": {"python": {"faust-streaming": "0.11"}, "quix": {"quixstreams": "3.28"}},
        "config": {"events": 2_000_000, "loops": 413, "partitions": 6, "flush_interval_s": 5},
        "systems": {
            "floor": {"steady_events_per_s": 80_000, "events_per_s": 70_000, "rss_max_mib": 40, "rss_sum_mib": 40},
            "k2": lake | {"freshness": {"p50_s": 3.2, "p99_s": 6.1}, "kill": {"missing": 0, "doubled": 0}},
            "quix": lake | {"steady_events_per_s": 20_000, "kill": {"missing": 0, "doubled": 291}},
            "connect": {"error": "timed out"},
        },
    }


def test_table_has_ratios_and_kill_figures() -> None:
    text = report.table(_results())
    lines = text.splitlines()
    assert lines[0].startswith("system")
    quix = next(line for line in lines if line.startswith("quix"))
    assert "2.00" in quix and "0/291" in quix
    assert "8.00" in next(line for line in lines if line.startswith("floor"))
    assert "error" in next(line for line in lines if line.startswith("connect"))


def test_readme_section_is_generated_between_markers_and_replaced(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# K2\n\nintro\n\n## Configuration\n\nrest\n")
    report.update_readme(_results(), readme)
    first = readme.read_text()
    assert first.index(report.BEGIN) < first.index("## Performance") < first.index(report.END)
    assert first.index(report.END) < first.index("## Configuration")
    assert "2 cores (Test CPU)" in first and "| k2 |" in first
    changed = _results()
    changed["systems"]["k2"]["steady_events_per_s"] = 12_345
    report.update_readme(changed, readme)
    second = readme.read_text()
    assert second.count(report.BEGIN) == 1 and "12,345" in second and "rest\n" in second


def test_findings_state_the_targets_figures() -> None:
    results = _results()
    results["systems"]["k2x2"] = {"steady_events_per_s": 17_000}
    results["systems"]["k2"]["soak"] = {
        "events": 6_000_000,
        "rate": 10_000,
        "seconds": 600,
        "first_half_peak_mib": 410.0,
        "second_half_peak_mib": 415.0,
        "second_half_growth_mib_per_min": 0.4,
        "rss_peak_mib": 431.0,
        "missing": 0,
        "doubled": 0,
    }
    lines = report.findings(results)
    assert lines[0] == "- One K2 worker lands 12% of the floor's rate and 0.50x Quix Streams'."
    assert lines[1] == "- Two K2 workers in one group: 1.70x one."
    assert "growing +0.4 MiB/min" in lines[2] and "0 missing, 0 doubled" in lines[2]
    assert "415 MiB in the second (431 MiB at most)," in lines[2]
    assert report.findings({"systems": {}}) == []


def test_two_workers_are_set_against_the_cores_they_kept_busy() -> None:
    results = _results()
    results["machine"] = {"nproc": 2}
    results["systems"]["k2"] |= {"cpu_s_per_million": 20.0}
    results["systems"]["k2x2"] = {"steady_events_per_s": 12_000, "cpu_s_per_million": 100.0}
    line = report.findings(results)[1]
    assert line.startswith("- Two K2 workers in one group: ")
    k2 = results["systems"]["k2"]
    assert (
        f"one worker kept {20.0 * k2['steady_events_per_s'] / 1e6:.1f} cores busy and two kept 1.2, of the machine's 2"
        in line
    )
    assert report.busy_cores({"steady_events_per_s": 1000}) is None
