"""After K2's benchmark load: its tables' files and a one-day scan, before and after ``k2 maintain``'s work.

A streaming sink writes a file per day partition per commit; reading a day then opens many
small files. Run on the lake K2 landed the load into (the worker stopped, so nothing is in
flight and orphan files of any age can go), on the market tables.
"""

from __future__ import annotations

import time
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

from k2.lake.maintain import MaintainPolicy, maintain_table
from k2.lake.schemas import QUOTES, TABLES, TRADES

__all__ = ["maintenance_phase"]

_DAY_US = 86_400_000_000
POLICY = MaintainPolicy(snapshot_retention_s=0, keep_snapshots=1, orphan_min_age_s=0, min_files=2)


def _files(catalog: Catalog, name: str) -> tuple[int, int, dict[int, int]]:
    """(data files, their bytes, rows per day) of a day-partitioned table."""
    count = size = 0
    days: dict[int, int] = {}
    for task in catalog.load_table(name).scan().plan_files():
        count += 1
        size += task.file.file_size_in_bytes
        day = task.file.partition[0]
        days[day] = days.get(day, 0) + task.file.record_count
    return count, size, days


def _scan_s(catalog: Catalog, name: str, day: int, repeat: int = 3) -> float:
    """Best of ``repeat`` timings of reading one day of ``name`` into Arrow."""
    day_filter = And(
        GreaterThanOrEqual(term="exchange_timestamp", value=day * _DAY_US),
        LessThan(term="exchange_timestamp", value=(day + 1) * _DAY_US),
    )
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        catalog.load_table(name).scan(row_filter=day_filter).to_arrow()
        best = min(best, time.perf_counter() - start)
    return best


def maintenance_phase(catalog: Catalog) -> dict[str, Any]:
    """Files and a one-day scan of trades and quotes, before and after maintenance; what it did."""
    out: dict[str, Any] = {}
    for name in (TRADES, QUOTES):
        count, size, days = _files(catalog, name)
        busiest = max(days, key=lambda d: days[d])
        before_scan = _scan_s(catalog, name, busiest)
        done = maintain_table(catalog, TABLES[name], POLICY)
        after_count, after_size, _ = _files(catalog, name)
        out[name] = {
            "files_before": count,
            "avg_file_mb_before": round(size / max(1, count) / 2**20, 3),
            "files_after": after_count,
            "avg_file_mb_after": round(after_size / max(1, after_count) / 2**20, 3),
            "day_rows": days[busiest],
            "day_scan_s_before": round(before_scan, 3),
            "day_scan_s_after": round(_scan_s(catalog, name, busiest), 3),
            "days_compacted": len(done.compacted),
            "snapshots_expired": done.expired,
            "orphans_deleted": done.orphans,
        }
    return out
