"""Which offsets the value audit checks: every one, or a seeded sample of blocks. Pure.

The unit is a *block*: ``block`` consecutive offsets of one partition (offsets
``b * block`` to ``(b + 1) * block - 1``). Kafka is read sequentially, so sampling single
offsets would save nothing: a sampled block costs one seek and one contiguous read, and an
unsampled one costs nothing at all, on either side. ``--sample F`` checks
``ceil(F x blocks)`` of each partition's blocks (at least one), chosen by a generator seeded
with ``(seed, topic, partition)``: the same seed checks the same blocks of the same log.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK", "Selection", "choose"]

BLOCK = 50_000
"""Offsets per block: a bucket of lake rows and one Kafka read (tens of MB at most)."""

_KEY_SHIFT = 40
_NOWHERE = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Selection:
    """The blocks to check per partition (all of them where ``blocks`` is None) and each partition's log start."""

    block: int
    log_starts: Mapping[int, int]
    blocks: Mapping[int, frozenset[int]] | None = None
    totals: Mapping[int, int] | None = None
    """Blocks each partition's log spans (what a sample was drawn from)."""

    def keep(self, partitions: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: whether to check it, and whether Kafka no longer holds its source (below the log start,
        or a partition Kafka does not have)."""
        if not len(partitions):
            empty = np.zeros(0, dtype=bool)
            return empty, empty
        top = max(int(partitions.max()), max(self.log_starts, default=0)) + 1
        starts = np.full(top, _NOWHERE, dtype=np.int64)
        for p, start in self.log_starts.items():
            if p >= 0:
                starts[p] = start
        known = partitions >= 0
        gone = ~known | (offsets < starts[np.where(known, partitions, 0)])
        keep = ~gone
        if self.blocks is not None:
            chosen = np.fromiter(((p << _KEY_SHIFT) | b for p, bs in self.blocks.items() for b in bs), dtype=np.int64)
            keys = (partitions << _KEY_SHIFT) | (offsets // self.block)
            keep &= np.isin(keys, chosen)
        return keep, gone

    def checked(self, partition: int) -> int | None:
        """How many of the partition's blocks a sample checks (None: all)."""
        return None if self.blocks is None else len(self.blocks.get(partition, ()))


def choose(
    topic: str, bounds: Mapping[int, tuple[int, int]], block: int, fraction: float | None, seed: int
) -> Selection:
    """Every block of every partition (``fraction`` None), or a seeded sample of each partition's blocks."""
    starts = {p: low for p, (low, _) in bounds.items()}
    if fraction is None:
        return Selection(block, starts)
    chosen: dict[int, frozenset[int]] = {}
    totals: dict[int, int] = {}
    for p, (low, high) in sorted(bounds.items()):
        if high <= low:
            continue
        first, last = low // block, (high - 1) // block
        n = last - first + 1
        k = max(1, math.ceil(fraction * n))
        picked = random.Random(f"{seed}/{topic}/{p}").sample(range(first, last + 1), min(k, n))
        chosen[p] = frozenset(picked)
        totals[p] = n
    return Selection(block, starts, chosen, totals)
