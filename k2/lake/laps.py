"""Wall time per step of a commit: where a commit's time goes, step by step.

A commit reads the table (unless it can reuse what it read), plans (marks, filter), writes the
data files, writes the manifests and the manifest list, and swaps the metadata in the catalog.
:class:`Laps` records each step's seconds as the code passes from one to the next; the writer
returns them with its result and the flusher publishes them
(``k2_iceberg_commit_step_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["STEPS", "Laps"]

STEPS = ("refresh", "plan", "write", "manifests", "catalog")
"""The steps of one commit, in order (a retried commit adds its attempts' time to the same steps)."""


class Laps:
    """Seconds per named step, each measured from the end of the previous one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = clock()
        self.seconds: dict[str, float] = {}

    def lap(self, step: str) -> None:
        """The time since the last lap (or the start) was spent in ``step``."""
        now = self._clock()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._last
        self._last = now
