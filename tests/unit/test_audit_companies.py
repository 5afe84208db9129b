"""The upserted companies table against company_versions: latest version, one row each, no orphans."""

from __future__ import annotations

import pyarrow as pa

from k2.audit.companies import (
    DUPLICATE_ROWS,
    MISSING_ROW,
    NOT_A_VERSION,
    STALE,
    CompanyProblem,
    company_problems,
)


def table(*rows: tuple[int, int, int]) -> pa.Table:
    """(company_id, kafka_partition, kafka_offset) rows."""
    return pa.table(
        {
            "company_id": pa.array([r[0] for r in rows], pa.int32()),
            "kafka_partition": pa.array([r[1] for r in rows], pa.int32()),
            "kafka_offset": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


VERSIONS = table((1, 0, 0), (2, 0, 1), (1, 0, 2), (3, 0, 3), (1, 0, 7))


def test_each_company_at_its_latest_version() -> None:
    assert company_problems(table((1, 0, 7), (2, 0, 1), (3, 0, 3)), VERSIONS) == []


def test_an_older_version_is_stale() -> None:
    problems = company_problems(table((1, 0, 2), (2, 0, 1), (3, 0, 3)), VERSIONS)
    assert problems == [CompanyProblem(1, STALE, row=(0, 2), latest=(0, 7))]
    assert "companies holds 0@2, latest version is 0@7" in problems[0].describe()


def test_a_company_without_its_row() -> None:
    assert company_problems(table((1, 0, 7), (3, 0, 3)), VERSIONS) == [CompanyProblem(2, MISSING_ROW, latest=(0, 1))]


def test_a_row_no_version_backs() -> None:
    problems = company_problems(table((1, 0, 7), (2, 0, 1), (3, 0, 3), (4, 0, 9), (5, 0, 99)), VERSIONS)
    assert problems == [CompanyProblem(4, NOT_A_VERSION, row=(0, 9)), CompanyProblem(5, NOT_A_VERSION, row=(0, 99))]


def test_a_row_newer_than_every_version_is_not_a_version() -> None:
    # companies committed an offset company_versions never got: the history lost it.
    problems = company_problems(table((1, 0, 8), (2, 0, 1), (3, 0, 3)), VERSIONS)
    assert problems == [CompanyProblem(1, NOT_A_VERSION, row=(0, 8), latest=(0, 7))]


def test_two_rows_for_one_company() -> None:
    problems = company_problems(table((1, 0, 7), (1, 0, 2), (2, 0, 1), (3, 0, 3)), VERSIONS)
    assert problems == [CompanyProblem(1, DUPLICATE_ROWS, rows=2)]


def test_empty_tables() -> None:
    assert company_problems(table(), table()) == []
    assert company_problems(table(), VERSIONS) == [
        CompanyProblem(1, MISSING_ROW, latest=(0, 7)),
        CompanyProblem(2, MISSING_ROW, latest=(0, 1)),
        CompanyProblem(3, MISSING_ROW, latest=(0, 3)),
    ]
