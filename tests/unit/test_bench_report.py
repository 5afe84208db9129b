"""bench/report.py: the tables and README's Performance section come from a results JSON's rounds, between markers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402


def _lake(steady: float, cpu: float) -> dict[str, Any]:
    return {
        "steady_events_per_s": steady,
        "events_per_s": steady * 0.8,
        "cpu_s_per_million": cpu,
        "rss_max_mib": 300.0,
        "rss_sum_mib": 300.0,
        "data_files": 12,
        "avg_file_mb": 1.5,
        "missing": 0,
        "doubled": 0,
    }


def _floor(steady: float, cpu: float) -> dict[str, Any]:
    return {"steady_events_per_s": steady, "events_per_s": steady, "cpu_s_per_million": cpu} | {
        "rss_max_mib": 40,
        "rss_sum_mib": 40,
    }


def _results() -> dict[str, Any]:
    """Three rounds; round 2 disturbed (the floor and everyone slower), K2 twice Quix's rate in every round."""
    per_round = [(80_000, 10_000, 8.0), (40_000, 5_000, 8.2), (84_000, 12_000, 7.9)]
    rounds = []
    for i, (floor, k2, cpu) in enumerate(per_round, 1):
        systems = {
            "floor": _floor(floor, cpu),
            "k2": _lake(k2, 90.0),
            "quix": _lake(k2 / 2, 150.0),
            "connect": {"error": "timed out"},
        }
        rounds.append({"round": i, "loadavg_start": [1.0 + i], "systems": systems})
    return {
        "date": "2026-01-01",
        "duration_s": 600,
        "machine": {"nproc": 2, "cpu": "Test CPU", "ram_gib": 8, "python": "3.11", "java": "17", "loadavg_start": [1]},
        "versions": {"python": {"faust-streaming": "0.11"}, "quix": {"quixstreams": "3.28"}},
        "config": {"events": 2_000_000, "loops": 413, "partitions": 6, "flush_interval_s": 5, "deviation": 0.25},
        "rounds": rounds,
        "systems": {
            "floor": {},
            "k2": {"freshness": {"p50_s": 3.2, "p99_s": 6.1}, "kill": {"missing": 0, "doubled": 0}},
            "quix": {"kill": {"missing": 0, "doubled": 291}},
            "connect": {},
        },
    }


def _line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name))


def test_table_has_medians_ranges_and_per_round_ratios() -> None:
    text = report.table(_results())
    assert text.splitlines()[0].startswith("system")
    k2 = _line(text, "k2")
    assert "10.0k (5.0k-12.0k)" in k2 and "1.00" in k2 and "90.0" in k2 and "3.2/6.1" in k2 and "0/0" in k2
    quix = _line(text, "quix")
    assert "0.50" in quix and "0.50 (" not in quix  # the same ratio in every round: no range
    assert "1.67" in quix and "0/291" in quix  # CPU per event 150 against 90
    floor = _line(text, "floor")
    assert "8.00 (7.00-8.00)" in floor  # floor / K2 per round: 8, 8, 7
    assert "error" in _line(text, "connect") and "0 (3 failed)" in _line(text, "connect")


def test_round_table_says_which_round_was_disturbed() -> None:
    text = report.round_table(_results())
    assert "40.0k / 8.2" in _line(text, "2 ") and "floor rate -50%" in _line(text, "2 ")
    assert _line(text, "1 ").rstrip().endswith("-") and _line(text, "3 ").rstrip().endswith("-")


def test_readme_section_is_generated_between_markers_and_replaced(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# K2\n\nintro\n\n## Configuration\n\nrest\n")
    report.update_readme(_results(), readme)
    first = readme.read_text()
    assert first.index(report.BEGIN) < first.index("## Performance") < first.index(report.END)
    assert first.index(report.END) < first.index("## Configuration")
    assert "2 cores (Test CPU)" in first and "| k2 | 3 |" in first and "3 interleaved rounds" in first
    assert "**Disturbed rounds** (floor more than 25% from its median): round 2: floor rate -50%" in first
    assert "Scale-out" not in first
    changed = _results()
    changed["rounds"][0]["systems"]["k2"]["steady_events_per_s"] = 12_345
    report.update_readme(changed, readme)
    second = readme.read_text()
    assert second.count(report.BEGIN) == 1 and "12.3k" in second and "rest\n" in second


def test_findings_state_the_targets_figures_as_medians_of_per_round_ratios() -> None:
    results = _results()
    for i, r in enumerate(results["rounds"]):
        r["systems"]["k2x2"] = {"steady_events_per_s": (17_000, 8_500, 20_400)[i], "cpu_s_per_million": 100.0}
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
    assert lines[0] == (
        "- One K2 worker lands 12% (12% to 14%) of the floor's rate at 11.25x (10.98x to 11.39x) its CPU per event, "
        "and 2.00x Quix Streams' rate (medians of the per-round ratios, their range in brackets)."
    )
    assert lines[1].startswith("- Two K2 workers in one group: 1.70x one.")
    assert "one worker kept 0.9 cores busy and two kept 1.7, of the machine's 2" in lines[1]
    assert lines[2].startswith("- **Disturbed rounds**")
    assert "growing +0.4 MiB/min" in lines[3] and "0 missing, 0 doubled" in lines[3]
    assert "415 MiB in the second (431 MiB at most)," in lines[3]
    assert report.findings({"systems": {}, "rounds": []}) == []


def test_calm_rounds_are_said_to_be_calm() -> None:
    results = _results()
    results["rounds"][1]["systems"]["floor"] = _floor(81_000, 8.1)
    assert not any("Disturbed" in line for line in report.findings(results))
    assert any(line.startswith("- No round's floor was more than 25%") for line in report.findings(results))


def test_a_results_file_of_one_run_from_before_rounds_reads_as_one_round() -> None:
    old = _results()
    del old["rounds"]
    old["systems"]["floor"] = _floor(80_000, 8.0)
    old["systems"]["k2"] |= _lake(10_000, 90.0)
    old["systems"]["quix"] |= _lake(5_000, 150.0)
    old["systems"]["connect"] = {"error": "timed out"}
    text = report.table(old)
    assert "10.0k" in _line(text, "k2") and "3.2/6.1" in _line(text, "k2") and "8.00" in _line(text, "floor")
    assert "(" not in _line(text, "k2").split("3.2/6.1")[0]  # one round: no ranges
    assert "1 interleaved round in" in report.section(old)


def test_the_scaleout_results_go_in_the_same_section(tmp_path: Path) -> None:
    from tests.unit.test_bench_scaleout import _run

    readme = tmp_path / "README.md"
    readme.write_text("# K2\n")
    scaleout = {
        "date": "2026-01-02",
        "duration_s": 900,
        "machine": {"nproc": 2},
        "config": {"workers": [1, 6], "partitions": 12, "rate_per_worker": 500, "seconds": 120, "warmup_s": 10},
        "runs": [_run(1, 5.0, 100), _run(6, 5.5, 110)],
    }
    report.update_readme(_results(), readme, scaleout=scaleout)
    text = readme.read_text()
    assert text.index("## Performance") < text.index("### Scale-out") < text.index(report.END)
    assert "the goal (both within 20% of one worker's) met" in text
