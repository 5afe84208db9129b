"""Offsets as inclusive ``[first, last]`` runs, the form every verdict and report uses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tests.faults.source import Position

__all__ = ["format_ranges", "offset_count", "position_ranges", "ranges"]


def ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as inclusive ``[first, last]`` runs: ``[0, 1, 2, 7]`` -> ``[[0, 2], [7, 7]]``."""
    out: list[list[int]] = []
    for offset in sorted(set(offsets)):
        if out and offset == out[-1][1] + 1:
            out[-1][1] = offset
        else:
            out.append([offset, offset])
    return out


def position_ranges(positions: Iterable[Position]) -> dict[str, list[list[int]]]:
    """Positions as ``{"topic/partition": [[first, last], ...]}``, the form every report uses."""
    by_tp: dict[str, list[int]] = {}
    for topic, partition, offset in positions:
        by_tp.setdefault(f"{topic}/{partition}", []).append(offset)
    return {tp: ranges(offs) for tp, offs in sorted(by_tp.items())}


def format_ranges(found: Mapping[str, list[list[int]]], limit: int = 12) -> str:
    """``t.trades/0:0-2,7 t.quotes/3:10-19`` (at most ``limit`` runs, then how many more)."""
    parts: list[str] = []
    shown = total = 0
    for tp, runs in found.items():
        total += len(runs)
        keep = runs[: max(0, limit - shown)]
        shown += len(keep)
        if keep:
            parts.append(f"{tp}:" + ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in keep))
    text = " ".join(parts) or "none"
    return text + (f" (+{total - shown} more runs)" if total > shown else "")


def offset_count(found: Mapping[str, list[list[int]]]) -> int:
    """How many offsets the runs cover."""
    return sum(b - a + 1 for runs in found.values() for a, b in runs)
