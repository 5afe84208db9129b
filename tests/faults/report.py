"""The fault report: one :class:`ScenarioReport` per scenario run, a line printed and an entry appended
to the JSON report (``var/faults/report.json`` unless ``K2_FAULTS_REPORT``; see ``summarize.py``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.config import ROOT
from tests.faults.ranges import format_ranges

__all__ = ["ScenarioReport", "append_report", "code_under_test"]


@dataclass
class ScenarioReport:
    """One line of the fault report: what went in, what came out, what was lost or doubled, and when."""

    scenario: str
    title: str
    version: str
    seed: int
    verdict: str
    failures: list[str]
    events_in: int
    rows_out: int
    rejects: int
    missing_count: int
    doubled_count: int
    missing_by_label: dict[str, int]
    doubled_by_label: dict[str, int]
    missing: dict[str, list[list[int]]]
    doubled: dict[str, list[list[int]]]
    extra: dict[str, list[list[int]]]
    stall: str | None
    recovery_s: float | None
    fault_to_caught_up_s: float | None
    flow_end_to_caught_up_s: float | None
    peak_rss_mb: dict[str, float]
    peak_rss_max_mb: float | None
    faults: list[dict[str, Any]]
    crashes: list[dict[str, Any]]
    values: dict[str, Any]
    law: dict[str, Any]
    notes: list[str]
    started_at: str
    duration_s: float
    code: dict[str, str]
    #: Per SIGKILL measured by ``tests/faults/takeover.py``: what the survivor restored, against the buffer's bound,
    #: and how long its partitions stood still.
    takeovers: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        rss = f"{self.peak_rss_max_mb:.0f}MB" if self.peak_rss_max_mb else "-"
        rec = f"{self.recovery_s:.1f}s" if self.recovery_s is not None else "-"
        return (
            f"FAULTS {self.scenario} [{self.version}] {self.verdict.upper()}: events_in={self.events_in} "
            f"rows_out={self.rows_out} rejects={self.rejects} missing={self.missing_count} "
            f"[{format_ranges(self.missing)}] doubled={self.doubled_count} [{format_ranges(self.doubled)}] "
            f"recovery={rec} peak_rss={rss} stall={self.stall or 'no'} crashes={len(self.crashes)}"
            + "".join(f" takeover=[{t['line']}]" for t in self.takeovers)
            + (f" failures={'; '.join(self.failures)}" if self.failures else "")
        )


def append_report(path: Path, report: ScenarioReport) -> None:
    """Append to the JSON report (a list of scenario reports), under a lock: runs may overlap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".report.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries: list[Any] = []
        if path.exists():
            with contextlib.suppress(ValueError):
                loaded = json.loads(path.read_text() or "[]")
                entries = loaded if isinstance(loaded, list) else []
        entries.append(asdict(report))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1, default=str) + "\n")
        tmp.replace(path)


def code_under_test(env: Mapping[str, str]) -> dict[str, str]:
    """Which ``k2`` the workers import, and the commit of the tree: the evidence says what it measured."""
    out = {"root": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "import k2; print(k2.__file__)"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    out["k2_module"] = proc.stdout.strip() or proc.stderr.strip()[-200:]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    out["commit"] = git.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "k2"], cwd=ROOT, capture_output=True, text=True)
    out["k2_tree_dirty"] = "yes" if dirty.stdout.strip() else "no"
    return out
