"""The body of ``/k2/tables``: what each Iceberg table holds and what waits to reach it. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from k2.lake.records import TopicPartition
from k2.lake.status import TableStatus

__all__ = ["offsets_json", "overview_payload", "tables_payload"]


def offsets_json(offsets: Mapping[TopicPartition, int]) -> dict[str, dict[str, int]]:
    """``{(topic, partition): offset}`` as JSON: ``{topic: {"partition": offset}}``, sorted."""
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        out.setdefault(topic, {})[str(partition)] = offset
    return out


def tables_payload(statuses: Sequence[TableStatus], buffered: Mapping[str, int], now_s: float) -> dict[str, Any]:
    """One object per K2 table: its current snapshot, commit time and age, rows, offsets and buffered rows.

    ``buffered`` is per table name (rows held by this worker, not yet flushed); a table
    that does not exist yet is listed with ``exists: false`` so the shape never changes.
    """
    tables = []
    for st in statuses:
        age = st.age_s(now_s)
        tables.append(
            {
                "table": st.name,
                "exists": st.exists,
                "snapshot_id": st.snapshot_id,
                "committed_at": None
                if st.committed_at_ms is None
                else datetime.fromtimestamp(st.committed_at_ms / 1000, UTC).isoformat(timespec="milliseconds"),
                "commit_age_seconds": None if age is None else round(age, 3),
                "rows": st.rows,
                "offsets": offsets_json(st.offsets),
                "buffered_rows": buffered.get(st.name, 0),
            }
        )
    return {"tables": tables}


def overview_payload(
    worker_id: str,
    ready: Mapping[str, Any],
    lag: Mapping[str, Any],
    tables: Sequence[Mapping[str, Any]],
    rejects: Mapping[tuple[str, str], float],
) -> dict[str, Any]:
    """The body of ``/k2/overview``, what the operator page (``/k2/``) shows. Pure.

    ``ready`` is ``/k2/ready``'s body, ``lag`` ``/k2/lag``'s, ``tables`` the ``tables`` of
    ``/k2/tables``; ``rejects`` counts by (topic, reason), as this worker counted them.
    """
    checks = [{"name": name, **check} for name, check in ready.get("checks", {}).items()]
    return {
        "worker_id": worker_id,
        "ready": {"status": "ready" if ready.get("ready") else "not ready", "checks": checks},
        "lag": lag,
        "tables": [t for t in tables if t.get("exists", True)],
        "rejects": [
            {"topic": topic, "reason": reason, "rejects": int(n)} for (topic, reason), n in sorted(rejects.items()) if n
        ],
    }
