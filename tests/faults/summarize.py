"""Print the fault report (``var/faults/report.json``) as a Markdown table, one row per scenario run.

    python -m tests.faults.summarize [REPORT] [--last]

``--last`` keeps only the newest run of each (scenario, version), which is what a
comparison between two versions of K2 wants. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _ranges(found: dict[str, list[list[int]]], limit: int = 4) -> str:
    runs = [(tp, a, b) for tp, rs in found.items() for a, b in rs]
    text = ", ".join(f"{tp.split('.', 1)[-1]}:{a}" + (f"-{b}" if b != a else "") for tp, a, b in runs[:limit])
    return (text + (f" (+{len(runs) - limit} runs)" if len(runs) > limit else "")) or "-"


def _order(r: dict[str, Any]) -> tuple[bool, bool, str]:
    """Short before long, the control first, then the scenarios by name."""
    return (r["version"] != "short", r["scenario"] != "control", r["scenario"])


def row(r: dict[str, Any]) -> str:
    """One Markdown table row of a scenario report."""
    stall = (r.get("stall") or "-").split(" while ")[0]
    rec = "-" if r.get("recovery_s") is None else f"{r['recovery_s']:.0f}"
    rss = "-" if r.get("peak_rss_max_mb") is None else f"{r['peak_rss_max_mb']:.0f}"
    cells = [
        r["scenario"],
        r["version"],
        r["verdict"].upper(),
        str(r["events_in"]),
        str(r["rows_out"]),
        str(r["rejects"]),
        f"{r['missing_count']} {_ranges(r['missing'])}",
        f"{r['doubled_count']} {_ranges(r['doubled'])}",
        stall,
        rec,
        rss,
        str(len(r.get("crashes") or [])),
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def takeover_row(r: dict[str, Any], t: dict[str, Any]) -> str:
    """One Markdown table row of a SIGKILL takeover (``tests/faults/takeover.py``)."""

    def cell(key: str, fmt: str) -> str:
        return "-" if t.get(key) is None else format(t[key], fmt)

    cells = [
        r["scenario"],
        r["version"],
        f"{t['uptime_s'] / 60:.1f}",
        cell("restored_records", ","),
        cell("restored_mb", ".1f"),
        cell("restored_offsets", ","),
        f"{2 * t['buffer_bound']:,}",
        cell("kill_to_rebalance_s", ".1f"),
        cell("restore_s", ".1f"),
        cell("first_consumed_s", ".1f"),
        cell("takeover_s", ".1f"),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?", type=Path, default=ROOT / "var" / "faults" / "report.json")
    parser.add_argument("--last", action="store_true", help="only the newest run of each scenario and version")
    args = parser.parse_args(argv)
    entries: list[dict[str, Any]] = json.loads(args.report.read_text())
    if args.last:
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in entries:
            newest[(entry["scenario"], entry["version"])] = entry
        entries = sorted(newest.values(), key=_order)
    print(
        "| scenario | version | verdict | events in | rows out | rejects | missing (ranges) | doubled (ranges) "
        "| stall | recovery s | peak RSS MB | crashes |"
    )
    print("|" + "---|" * 12)
    for entry in entries:
        print(row(entry))
    takeovers = [(entry, t) for entry in entries for t in entry.get("takeovers") or []]
    if takeovers:
        print(
            "\n| scenario | version | uptime min | restored records | MB | offsets | 2 x buffer bound "
            "| rebalance s | restore s | first partition s | takeover s |"
        )
        print("|" + "---|" * 11)
        for entry, t in takeovers:
            print(takeover_row(entry, t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
