"""Sets of Kafka offsets as sorted, disjoint, inclusive ranges, computed with Arrow kernels. Pure.

An audit over tens of millions of rows cannot afford a Python loop per offset, and its
answers (what is missing, what is doubled) are short runs far more often than scattered
singletons. So offsets are handled as Arrow arrays (sort, then ``pairwise_diff``) and
results as :class:`Ranges`: two int64 arrays of run starts and ends, whose size is the
number of runs, not of offsets. Everything here is vectorised; Python only ever loops
over the handful of ranges it prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "EMPTY",
    "Ranges",
    "as_int64",
    "coalesce",
    "holes",
    "intersect",
    "repeated",
    "runs",
    "sorted_offsets",
    "unique_sorted",
]

_INT64 = pa.int64()


def as_int64(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous int64 array (the vector kernels used here do not take chunked input)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if values.type != _INT64:
        values = values.cast(_INT64)
    if values.null_count:
        raise ValueError("offsets must not be null")
    return values


@dataclass(frozen=True, eq=False)
class Ranges:
    """Sorted, disjoint, non-adjacent inclusive ranges ``[starts[i], ends[i]]`` of offsets."""

    starts: pa.Array
    ends: pa.Array

    @classmethod
    def of(cls, *pairs: tuple[int, int]) -> Ranges:
        """Ranges from literal ``(start, end)`` pairs (tests, small inputs); must already be normal."""
        return cls(pa.array([a for a, _ in pairs], _INT64), pa.array([b for _, b in pairs], _INT64))

    def __len__(self) -> int:
        return len(self.starts)

    def __bool__(self) -> bool:
        return len(self.starts) > 0

    @property
    def count(self) -> int:
        """How many offsets the ranges hold."""
        if not len(self.starts):
            return 0
        return int(pc.sum(pc.add(pc.subtract(self.ends, self.starts), 1)).as_py())

    def pairs(self, limit: int | None = None) -> list[tuple[int, int]]:
        """The first ``limit`` ranges (all by default) as ``(start, end)`` tuples."""
        starts, ends = (self.starts, self.ends) if limit is None else (self.starts[:limit], self.ends[:limit])
        return list(zip(starts.to_pylist(), ends.to_pylist(), strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs())

    def format(self, limit: int = 20) -> str:
        """``23304-23316, 23400`` for people; the ranges past ``limit`` are counted, not listed."""
        text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.pairs(limit))
        if len(self) > limit:
            text += f", ... ({len(self) - limit} more range(s))"
        return text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranges):
            return NotImplemented
        return self.starts.equals(other.starts) and self.ends.equals(other.ends)

    def __hash__(self) -> int:  # equal ranges share their first pairs; enough for a frozen value
        return hash((len(self), *self.pairs(4)))

    def __repr__(self) -> str:
        return f"Ranges({self.format(8) or 'empty'})"


EMPTY = Ranges(pa.array([], _INT64), pa.array([], _INT64))


def sorted_offsets(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` in ascending order.

    Arrow's sort is fast on nearly sorted input, which is what the lake holds (K2 lands
    offsets in order within a flush), so no "already sorted?" pass is worth its cost.
    """
    values = as_int64(values)
    return values if len(values) < 2 else values.take(pc.array_sort_indices(values))


def _changes(sorted_values: pa.Array) -> pa.Array:
    """Boolean per position: differs from the previous value (True for the first)."""
    return pc.fill_null(pc.not_equal(pc.pairwise_diff(sorted_values), 0), True)


def unique_sorted(sorted_values: pa.Array) -> pa.Array:
    """The distinct values of an ascending array, ascending."""
    if len(sorted_values) < 2:
        return sorted_values
    return sorted_values.filter(_changes(sorted_values))


def repeated(sorted_values: pa.Array) -> pa.Array:
    """The distinct values that occur more than once in an ascending array, ascending."""
    if len(sorted_values) < 2:
        return sorted_values[:0]
    again = pc.invert(_changes(sorted_values))  # equal to the one before
    return unique_sorted(sorted_values.filter(again))


def runs(sorted_unique: pa.Array) -> Ranges:
    """The maximal runs of consecutive values of an ascending, duplicate-free array."""
    n = len(sorted_unique)
    if n == 0:
        return EMPTY
    step = pc.pairwise_diff(sorted_unique)  # null first, then value[i] - value[i-1] >= 1
    begins = pc.fill_null(pc.not_equal(step, 1), True)
    # A run ends where the next one begins, and at the last value.
    ends_mask = pa.concat_arrays([begins[1:], pa.array([True])])
    return Ranges(sorted_unique.filter(begins), sorted_unique.filter(ends_mask))


def holes(sorted_unique: pa.Array, low: int, high: int) -> Ranges:
    """The offsets of ``[low, high]`` not in ``sorted_unique`` (ascending, duplicate-free), as ranges."""
    if high < low:
        return EMPTY
    inside = sorted_unique.filter(pc.and_(pc.greater_equal(sorted_unique, low), pc.less_equal(sorted_unique, high)))
    present = runs(inside)
    # The complement of the runs within the window: before the first, between each pair, after the last.
    starts = pa.concat_arrays([pa.array([low], _INT64), pc.add(present.ends, 1)])
    ends = pa.concat_arrays([pc.subtract(present.starts, 1), pa.array([high], _INT64)])
    keep = pc.less_equal(starts, ends)
    return Ranges(starts.filter(keep), ends.filter(keep))


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The offsets in both ``a`` and ``b``, as ranges.

    A sweep over the boundaries: each range adds 1 at its start and removes 1 just past
    its end; where both sets overlap the running depth is 2. Cost is in the number of
    ranges, never in the number of offsets they cover.
    """
    if not a or not b:
        return EMPTY
    points = pa.concat_arrays([a.starts, pc.add(a.ends, 1), b.starts, pc.add(b.ends, 1)])
    deltas = pa.concat_arrays([pa.repeat(pa.scalar(d, _INT64), len(r)) for r in (a, b) for d in (1, -1)])
    summed = pa.table({"at": points, "delta": deltas}).group_by("at").aggregate([("delta", "sum")])
    summed = summed.filter(pc.not_equal(summed["delta_sum"], 0)).sort_by("at")
    at = as_int64(summed["at"])
    depth = pc.cumulative_sum(as_int64(summed["delta_sum"]))
    both = pc.equal(depth, 2)[:-1]  # the segment [at[i], at[i+1] - 1] has depth[i]; the last has none
    return Ranges(at[:-1].filter(both), pc.subtract(at[1:], 1).filter(both))


def coalesce(ranges: Ranges, max_gap: int) -> Ranges:
    """``ranges`` with every gap of at most ``max_gap`` offsets filled: the spans worth one sequential read."""
    if len(ranges) < 2:
        return ranges
    gaps = pc.subtract(pc.subtract(ranges.starts[1:], ranges.ends[:-1]), 1)
    wide = pc.greater(gaps, max_gap)
    begins = pa.concat_arrays([pa.array([True]), wide])
    ends = pa.concat_arrays([wide, pa.array([True])])
    return Ranges(ranges.starts.filter(begins), ranges.ends.filter(ends))
