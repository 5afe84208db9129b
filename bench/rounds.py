"""Figures of interleaved rounds, summarised: per system the median and range, ratios to K2, disturbed rounds.

``bench/compare.py`` runs every system once per round (floor, K2, ..., then again), so that a
machine disturbed for a while disturbs one round of every system rather than all the runs of
one. Here, pure functions over the rounds' figures (``[{system: figures}, ...]``):

- :func:`summarize`: per system and figure the median, min and max over the rounds it ran in
  (the range, not the interquartile range: with three to five rounds the quartiles are the
  extremes or interpolations between them);
- :func:`ratios`: per system and figure, ``system / K2`` within each round (both measured
  minutes apart), then the median and range of those per-round ratios;
- :func:`disturbed`: the rounds whose floor (aiokafka + fastavro decode, which does the same
  work every time) deviates from the floor's median over all rounds by more than a tolerance,
  in rate or in CPU per event: the machine was not as in the other rounds then (busier, or quieter).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEVIATION",
    "RATIO_FIGURES",
    "SUMMARIZED",
    "SUMMED",
    "Round",
    "disturbed",
    "ratios",
    "spread",
    "summarize",
]

Round = Mapping[str, Mapping[str, Any]]
"""One round's figures: system name -> what its throughput run measured (or ``{"error": ...}``)."""

SUMMARIZED = (
    "steady_events_per_s",
    "events_per_s",
    "cpu_s_per_million",
    "rss_max_mib",
    "rss_sum_mib",
    "seconds",
    "first_commit_s",
    "data_files",
    "avg_file_mb",
    "snapshots",
)
SUMMED = ("rows", "missing", "doubled", "outside_kafka")
"""Exactness counts: added over the rounds (0 means 0 in every round)."""
RATIO_FIGURES = ("steady_events_per_s", "cpu_s_per_million")
DEVIATION = 0.25
"""A round is disturbed when its floor's rate or CPU per event is further than this from the floor's median."""
_FLOOR_FIGURES = ("steady_events_per_s", "cpu_s_per_million")


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Median, min, max and count of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread of no values")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _ok(figures: Mapping[str, Any] | None) -> bool:
    return figures is not None and "error" not in figures


def summarize(rounds: Sequence[Round], name: str) -> dict[str, Any]:
    """One system over the rounds: ``{"rounds", "failed", "figures": {figure: spread}, <summed>: total}``."""
    ran = [r[name] for r in rounds if name in r]
    good = [f for f in ran if _ok(f)]
    out: dict[str, Any] = {"rounds": len(good), "failed": len(ran) - len(good), "figures": {}}
    for figure in SUMMARIZED:
        values = [f[figure] for f in good if f.get(figure) is not None]
        if values:
            out["figures"][figure] = spread(values)
    for figure in SUMMED:
        values = [f[figure] for f in good if f.get(figure) is not None]
        if values:
            out[figure] = sum(values)
    if good:
        out["steady_is_from_start"] = any(f.get("steady_is_from_start") for f in good)
    errors = [f["error"] for f in ran if not _ok(f)]
    if errors:
        out["errors"] = errors
    return out


def ratios(rounds: Sequence[Round], name: str, against: str = "k2") -> dict[str, dict[str, float | int]]:
    """Per figure of :data:`RATIO_FIGURES`: the spread of ``name / against`` over the rounds both ran well in."""
    out = {}
    for figure in RATIO_FIGURES:
        values = []
        for r in rounds:
            mine, theirs = r.get(name), r.get(against)
            if not (_ok(mine) and _ok(theirs)):
                continue
            assert mine is not None and theirs is not None
            a, b = mine.get(figure), theirs.get(figure)
            if a is not None and b:
                values.append(a / b)
        if values:
            out[figure] = spread(values)
    return out


def disturbed(rounds: Sequence[Round], tolerance: float = DEVIATION, floor: str = "floor") -> list[dict[str, Any]]:
    """Rounds (numbered from 1) whose floor is further than ``tolerance`` from the floor's median, and by how much.

    Needs the floor in at least two rounds; a round whose floor failed is not judged.
    """
    measured = {i: r[floor] for i, r in enumerate(rounds, 1) if _ok(r.get(floor))}
    if len(measured) < 2:
        return []
    out = []
    for figure in _FLOOR_FIGURES:
        values = {i: f[figure] for i, f in measured.items() if f.get(figure)}
        if len(values) < 2:
            continue
        median = statistics.median(values.values())
        for i, value in values.items():
            deviation = value / median - 1
            if abs(deviation) > tolerance:
                out.append(
                    {"round": i, "figure": figure, "value": value, "median": median, "deviation": round(deviation, 3)}
                )
    return sorted(out, key=lambda d: (d["round"], d["figure"]))
