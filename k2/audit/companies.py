"""The rule of the upserted ``reference_data.companies`` table, judged against its history. Pure.

``reference_data.company_versions`` holds every version of every company (append-only,
each reference-data offset once); ``reference_data.companies`` keeps one row per
``company_id``, the latest version. So the two must agree: each companies row is the
version of its company with the highest Kafka offset, and every company with a version
has its row. Vectorised (one sort, one hash join); Python only touches the problems.

A company's key always hashes to the same partition, so its versions share one and
their offsets are comparable; should they not, the highest offset still decides (ties
by partition) and a companies row is right only if it is that very version.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "COMPANY_COLUMNS",
    "DUPLICATE_ROWS",
    "MISSING_ROW",
    "NOT_A_VERSION",
    "STALE",
    "CompanyProblem",
    "company_problems",
]

STALE = "stale"
"""The companies row is an older version than the latest in company_versions."""
NOT_A_VERSION = "not_a_version"
"""The companies row is no version company_versions knows as its company's latest (none, or newer)."""
MISSING_ROW = "missing_row"
"""A company with versions has no companies row."""
DUPLICATE_ROWS = "duplicate_rows"
"""A company has more than one companies row (the upsert broke)."""

COMPANY_COLUMNS = ("company_id", "kafka_partition", "kafka_offset")
"""The columns :func:`company_problems` reads from both tables."""


@dataclass(frozen=True)
class CompanyProblem:
    """One company whose companies row breaks the rule; equal problems are the same finding (for settling)."""

    company_id: int
    kind: str
    row: tuple[int, int] | None = None
    """The companies row's (partition, offset), when there is exactly one."""
    latest: tuple[int, int] | None = None
    """The latest version's (partition, offset) in company_versions, when there is one."""
    rows: int = 1
    """How many companies rows the company has."""

    def describe(self) -> str:
        def at(pos: tuple[int, int] | None) -> str:
            return "-" if pos is None else f"{pos[0]}@{pos[1]}"

        if self.kind == DUPLICATE_ROWS:
            return f"company {self.company_id}: {self.rows} rows in companies (one expected)"
        if self.kind == MISSING_ROW:
            return f"company {self.company_id}: no companies row; latest version is {at(self.latest)}"
        if self.kind == STALE:
            return f"company {self.company_id}: companies holds {at(self.row)}, latest version is {at(self.latest)}"
        return (
            f"company {self.company_id}: companies holds {at(self.row)}, which is not the latest version "
            f"in company_versions ({at(self.latest) if self.latest else 'none'})"
        )


def _latest(versions: pa.Table) -> pa.Table:
    """One row per company_id: its version with the highest offset (ties: highest partition)."""
    if versions.num_rows == 0:
        return versions
    ordered = versions.sort_by(
        [("company_id", "ascending"), ("kafka_offset", "ascending"), ("kafka_partition", "ascending")]
    )
    ids = ordered["company_id"].combine_chunks()
    last = pa.concat_arrays([pc.not_equal(ids[1:], ids[:-1]), pa.array([True])])
    return ordered.filter(last)


def company_problems(companies: pa.Table, versions: pa.Table) -> list[CompanyProblem]:
    """Every company whose companies row is not its latest version, or that has no row, or several.

    Args:
        companies: ``company_id, kafka_partition, kafka_offset`` of every companies row.
        versions: the same columns of every company_versions row.
    """
    companies = companies.select(list(COMPANY_COLUMNS))
    latest = _latest(versions.select(list(COMPANY_COLUMNS))).rename_columns(["company_id", "v_partition", "v_offset"])
    counts = companies.group_by("company_id").aggregate([("company_id", "count")])
    dup_ids = counts.filter(pc.greater(counts["company_id_count"], 1))
    problems = [
        CompanyProblem(int(cid), DUPLICATE_ROWS, rows=int(n))
        for cid, n in zip(dup_ids["company_id"].to_pylist(), dup_ids["company_id_count"].to_pylist(), strict=True)
    ]
    single = companies.filter(pc.invert(pc.is_in(companies["company_id"], value_set=dup_ids["company_id"])))
    single = single.rename_columns(["company_id", "c_partition", "c_offset"])
    latest = latest.filter(pc.invert(pc.is_in(latest["company_id"], value_set=dup_ids["company_id"])))
    joined = single.join(latest, keys="company_id", join_type="full outer")
    same = pc.and_(
        pc.equal(joined["c_partition"], joined["v_partition"]), pc.equal(joined["c_offset"], joined["v_offset"])
    )
    wrong = joined.filter(pc.invert(pc.fill_null(same, False)))
    for row in wrong.sort_by("company_id").to_pylist():
        held = None if row["c_offset"] is None else (row["c_partition"], row["c_offset"])
        best = None if row["v_offset"] is None else (row["v_partition"], row["v_offset"])
        if held is None:
            kind = MISSING_ROW
        elif best is not None and held[0] == best[0] and held[1] < best[1]:
            kind = STALE
        else:
            kind = NOT_A_VERSION
        problems.append(CompanyProblem(int(row["company_id"]), kind, held, best))
    return sorted(problems, key=lambda p: (p.company_id, p.kind))
