"""Liveness, judged from the outside: every partition with records beyond the lake's mark lands them.

The law (``law.py``) says nothing was lost or doubled once the flow is over. A stall is the other
failure: a partition that some worker owns, or that nobody owns, and that stops landing while the
lake says all is well. :func:`wait_every_partition_lands` takes a snapshot of what Kafka holds
beyond each partition's mark and waits, bounded, until the lake's marks cover it, partition by
partition; the partitions that did not make it are named, with what they still wait for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tests.faults.source import TP

__all__ = ["Landing", "wait_every_partition_lands"]


@dataclass
class Landing:
    """How long each partition that had records waiting took to land them (seconds), and which did not."""

    took_s: dict[TP, float] = field(default_factory=dict)
    stuck: dict[TP, int] = field(default_factory=dict)
    """Partitions that did not land what they had within the bound: records still above the mark."""

    @property
    def slowest_s(self) -> float | None:
        return max(self.took_s.values()) if self.took_s else None

    def describe_stuck(self) -> str:
        return ", ".join(f"{t}/{p} ({n} waiting)" for (t, p), n in sorted(self.stuck.items()))


def wait_every_partition_lands(
    ends: Callable[[], Mapping[TP, int] | None],
    marks: Callable[[], Mapping[TP, int] | None],
    bound_s: float,
    tick: Callable[[], None] = lambda: None,
    poll_s: float = 1.0,
) -> Landing:
    """Until every partition's records present now are below its lake mark, or ``bound_s`` has passed.

    ``ends`` and ``marks`` may answer None (a service that does not answer in time): the last reading
    is kept. A partition whose end does not move past its mark (no records) is not waited for.
    """
    began = time.monotonic()
    target: dict[TP, int] | None = None
    landing = Landing()
    last_marks: Mapping[TP, int] = {}
    while True:
        tick()
        if target is None:
            now_ends = ends()
            if now_ends is not None:
                target = dict(now_ends)
        current = marks()
        if current is not None:
            last_marks = current
        if target is not None:
            waiting = {tp: end - last_marks.get(tp, -1) - 1 for tp, end in target.items()}
            elapsed = time.monotonic() - began
            for tp, left in waiting.items():
                if left <= 0 and tp not in landing.took_s:
                    landing.took_s[tp] = round(elapsed, 1)
            if all(left <= 0 for left in waiting.values()):
                return landing
            if elapsed > bound_s:
                landing.stuck = {tp: left for tp, left in waiting.items() if left > 0}
                return landing
        time.sleep(poll_s)
