"""bench/rounds.py: medians and ranges over rounds, per-round ratios to K2, rounds whose floor deviates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import rounds  # noqa: E402


def _run(steady: float, cpu: float, **more: Any) -> dict[str, Any]:
    return {"steady_events_per_s": steady, "cpu_s_per_million": cpu, **more}


def test_spread_is_median_min_max_and_count() -> None:
    assert rounds.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert rounds.spread([1.0, 4.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2}
    with pytest.raises(ValueError):
        rounds.spread([])


def test_summarize_takes_the_rounds_a_system_ran_well_in_and_adds_its_exactness() -> None:
    figures = [
        {"k2": _run(100, 10, missing=0, doubled=0, rows=5)},
        {"k2": {"error": "timed out"}},
        {"k2": _run(140, 12, missing=1, doubled=2, rows=5, steady_is_from_start=True)},
        {"floor": _run(1, 1)},  # k2 not in this round
    ]
    out = rounds.summarize(figures, "k2")
    assert (out["rounds"], out["failed"], out["errors"]) == (2, 1, ["timed out"])
    assert out["figures"]["steady_events_per_s"] == {"median": 120, "min": 100, "max": 140, "n": 2}
    assert (out["missing"], out["doubled"], out["rows"]) == (1, 2, 10)
    assert out["steady_is_from_start"] is True
    assert rounds.summarize(figures, "quix") == {"rounds": 0, "failed": 0, "figures": {}}


def test_ratios_are_taken_within_each_round_then_summarised() -> None:
    # The machine slows everything in round 2: the per-round ratio stays 0.5, the ratio of medians would not.
    figures = [
        {"k2": _run(100, 10), "quix": _run(50, 40)},
        {"k2": _run(20, 30), "quix": _run(10, 120)},
        {"k2": _run(90, 11), "quix": _run(45, 44), "floor": _run(1, 1)},
        {"k2": {"error": "x"}, "quix": _run(1, 1)},  # not a pair: left out
    ]
    out = rounds.ratios(figures, "quix")
    assert out["steady_events_per_s"] == {"median": 0.5, "min": 0.5, "max": 0.5, "n": 3}
    assert out["cpu_s_per_million"]["median"] == 4.0
    assert rounds.ratios(figures, "k2", against="floor")["steady_events_per_s"]["n"] == 1
    assert rounds.ratios(figures, "connect") == {}


def test_a_round_whose_floor_deviates_from_the_floors_median_is_flagged() -> None:
    figures = [
        {"floor": _run(100_000, 8.0)},
        {"floor": _run(70_000, 8.4)},  # rate 30% below the median
        {"floor": _run(104_000, 11.0)},  # CPU per event 31% above the median
        {"floor": _run(98_000, 8.2)},
    ]
    flagged = rounds.disturbed(figures)
    assert [(d["round"], d["figure"]) for d in flagged] == [(2, "steady_events_per_s"), (3, "cpu_s_per_million")]
    assert flagged[0]["median"] == 99_000 and flagged[0]["deviation"] == pytest.approx(-0.293, abs=1e-3)
    assert rounds.disturbed(figures, tolerance=0.5) == []


def test_no_verdict_without_two_floors() -> None:
    assert rounds.disturbed([{"floor": _run(1, 1)}, {"k2": _run(1, 1)}]) == []
    assert rounds.disturbed([{"floor": _run(1, 1)}, {"floor": {"error": "x"}}]) == []
