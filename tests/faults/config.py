"""How the fault suite runs and where it finds things: :class:`Config` (from the environment), the paths.

``Config`` reads ``K2_FAULTS_LONG``, ``K2_FAULTS_SEED``, ``K2_FAULTS_REPORT``, ``K2_FAULTS_LAW``,
``K2_FAULTS_STALL_S``, ``K2_FAULTS_SETTLE_S`` and ``K2_FAULTS_CAP_S``. The paths are the repository's:
the stack script, the bundled sample, and the ``bin`` of the running Python (its ``k2`` and ``faust``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["BIN", "ROOT", "SAMPLE", "SAMPLE_EVENTS", "STACK_SCRIPT", "Config"]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.py"
SAMPLE = ROOT / "data" / "sample"
#: Events in one pass of data/sample: trades, quotes, reference rows.
SAMPLE_EVENTS = {"trades": 2243, "quotes": 2609, "reference": 4}

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """How the suite runs, from the environment: short (inside ``make test``) or long (``make test-faults``)."""

    long: bool
    seed: int
    report_path: Path
    law: str
    stall_s: float
    settle_s: float
    cap_s: float

    @classmethod
    def from_env(cls) -> Config:
        long = os.environ.get("K2_FAULTS_LONG", "") not in ("", "0")
        law = os.environ.get("K2_FAULTS_LAW", "both")
        if law not in ("lake", "audit", "both"):
            raise ValueError(f"K2_FAULTS_LAW={law!r}: expected lake, audit or both")
        return cls(
            long=long,
            seed=int(os.environ.get("K2_FAULTS_SEED", "20140310")),
            report_path=Path(os.environ.get("K2_FAULTS_REPORT", ROOT / "var" / "faults" / "report.json")),
            law=law,
            # K2's own alert (K2IcebergNoCommit) waits 300 s; two minutes without progress while behind is
            # a stall here. Scenarios that SIGKILL raise it (a dead member's 60 s session is waited out).
            stall_s=float(os.environ.get("K2_FAULTS_STALL_S", "120")),
            settle_s=float(os.environ.get("K2_FAULTS_SETTLE_S", "30")),
            cap_s=float(os.environ.get("K2_FAULTS_CAP_S", "2400" if long else "900")),
        )

    def pick(self, short: T, long: T) -> T:
        """The short or the long value of a scenario parameter."""
        return long if self.long else short

    @property
    def version(self) -> str:
        return "long" if self.long else "short"
