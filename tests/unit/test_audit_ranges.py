"""Offset sets as ranges: each operation against a brute-force set computation."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pytest

from k2.audit.ranges import (
    EMPTY,
    Ranges,
    coalesce,
    holes,
    intersect,
    repeated,
    runs,
    sorted_offsets,
    unique_sorted,
)


def as_set(ranges: Ranges) -> set[int]:
    return {o for a, b in ranges for o in range(a, b + 1)}


def normal(ranges: Ranges) -> bool:
    """Sorted, disjoint, and never adjacent (adjacent runs must have been merged)."""
    pairs = ranges.pairs()
    return all(a <= b for a, b in pairs) and all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(pairs))


def test_runs_of_consecutive_offsets() -> None:
    assert runs(pa.array([1, 3, 5, 9, 10, 11, 20], pa.int64())).pairs() == [(1, 1), (3, 3), (5, 5), (9, 11), (20, 20)]
    assert runs(pa.array([], pa.int64())) == EMPTY


def test_holes_within_a_window() -> None:
    present = pa.array([1, 3, 5, 9, 10, 11, 20], pa.int64())
    assert holes(present, 0, 25).pairs() == [(0, 0), (2, 2), (4, 4), (6, 8), (12, 19), (21, 25)]
    assert holes(present, 9, 11) == EMPTY
    assert holes(present, 4, 9).pairs() == [(4, 4), (6, 8)]
    assert holes(pa.array([], pa.int64()), 2, 4).pairs() == [(2, 4)]
    assert holes(present, 5, 4) == EMPTY  # an empty window (nothing landed yet)


def test_repeated_and_unique() -> None:
    values = sorted_offsets(pa.array([5, 3, 3, 9, 20, 1, 20, 20], pa.int64()))
    assert values.to_pylist() == [1, 3, 3, 5, 9, 20, 20, 20]
    assert unique_sorted(values).to_pylist() == [1, 3, 5, 9, 20]
    assert repeated(values).to_pylist() == [3, 20]
    assert repeated(pa.array([7], pa.int64())).to_pylist() == []


def test_sorted_offsets_takes_chunked_and_int32_input() -> None:
    chunked = pa.chunked_array([pa.array([4, 2], pa.int32()), pa.array([3], pa.int32())])
    assert sorted_offsets(chunked).to_pylist() == [2, 3, 4]
    with pytest.raises(ValueError, match="null"):
        sorted_offsets(pa.array([1, None], pa.int64()))


def test_intersect_and_coalesce() -> None:
    assert intersect(Ranges.of((0, 10), (20, 30)), Ranges.of((5, 25), (30, 40))).pairs() == [
        (5, 10),
        (20, 25),
        (30, 30),
    ]
    assert intersect(Ranges.of((0, 10)), Ranges.of((11, 25))) == EMPTY
    assert intersect(Ranges.of((0, 10)), EMPTY) == EMPTY
    assert coalesce(Ranges.of((0, 1), (5, 6), (2000, 2001)), 10).pairs() == [(0, 6), (2000, 2001)]
    assert coalesce(Ranges.of((0, 1), (3, 4)), 0).pairs() == [(0, 1), (3, 4)]


def test_count_and_format() -> None:
    r = Ranges.of((23304, 23316), (23400, 23400))
    assert r.count == 14
    assert r.format() == "23304-23316, 23400"
    many = Ranges.of(*[(i * 10, i * 10 + 1) for i in range(30)])
    assert many.format(limit=2) == "0-1, 10-11, ... (28 more range(s))"


@pytest.mark.parametrize("seed", range(25))
def test_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    universe = range(rng.randint(0, 5), rng.randint(5, 120))
    values = [rng.choice(universe) for _ in range(rng.randint(0, 150))] if len(universe) else []
    arr = sorted_offsets(pa.array(values, pa.int64()))
    assert arr.to_pylist() == sorted(values)
    assert set(repeated(arr).to_pylist()) == {v for v in values if values.count(v) > 1}
    low, high = rng.randint(-5, 60), rng.randint(-5, 130)
    gaps = holes(unique_sorted(arr), low, high)
    assert normal(gaps)
    assert as_set(gaps) == set(range(low, high + 1)) - set(values)
    other = holes(pa.array(sorted({rng.randint(0, 130) for _ in range(40)}), pa.int64()), 0, 130)
    both = intersect(gaps, other)
    assert normal(both)
    assert as_set(both) == as_set(gaps) & as_set(other)
    assert both.count == len(as_set(both))
