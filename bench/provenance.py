"""What the benchmark's figures were measured on: the machine, K2's commit, the packages that shape them."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["header", "k2_commit", "machine", "python_versions"]

ROOT = Path(__file__).resolve().parents[1]


def header(run: str) -> dict[str, Any]:
    """The first keys of every results file: the date, the run's id, K2's commit, the machine, the packages."""
    return {
        "date": dt.date.today().isoformat(),
        "run": run,
        "k2_commit": k2_commit(),
        "machine": machine(),
        "versions": {"python": python_versions()},
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "ram_gib": ram_gib,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "java": _java_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def k2_commit() -> str:
    """The checkout's commit (with ``+dirty`` when the work tree differs), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _java_version() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (done.stderr or done.stdout).splitlines()
    return first[0].strip() if first else "unknown"


def python_versions() -> dict[str, str]:
    """The K2 interpreter's packages that shape the figures."""
    out = {}
    for name in ("faust-streaming", "aiokafka", "pyiceberg", "fastavro", "polars", "pyarrow", "confluent-kafka"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
