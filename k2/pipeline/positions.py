"""Where a partition starts when this worker takes it: after everything already settled. Pure.

An offset is *settled* when its outcome (a row or a reject) is in the lake, or in a chunk
restored from the buffer's changelog that will be flushed. Re-reading a settled offset
from Kafka is never harmless: it could be classified differently the second time (a
schema registered meanwhile, a rule relative to the clock) and land in a second table.
So a new owner starts at the first offset that is not settled:

* ``base``: the offset after the lake's mark (the highest any table records), or the log
  start when the lake records nothing for the partition;
* if the group committed an offset beyond ``base``, the restored chunks must cover
  ``[base, committed)``: they are the buffer of the worker that committed it. The start
  is where that coverage ends, at most the committed offset. A hole (the lake lost its
  history: a table dropped and created again, or rolled back) starts the partition at the
  hole, so what the lake lost is landed again from Kafka;
* otherwise the lake is at or ahead of the group (a flush after the last commit, or the
  group's offsets expired): the start is ``base``.

Restored chunks at or after the start are untrusted or will be rebuilt: they are dropped
(tombstoned). Offsets only tell where a chunk lies, not whether the log has something
between two chunks, so a hole of control records or compacted-away offsets also starts
the partition early: extra work, never a loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from k2.buffer.chunks import GAPS, ChunkKey

__all__ = ["StartPlan", "covered_until", "start_positions"]

P = TypeVar("P")


@dataclass
class StartPlan(Generic[P]):
    starts: dict[P, int | None] = field(default_factory=dict)
    """Per partition, the position to start at (None: nothing known, the consumer's reset policy decides)."""
    discard: dict[P, list[ChunkKey]] = field(default_factory=dict)
    """Restored chunks at or after the start."""
    lost: dict[P, tuple[int, int]] = field(default_factory=dict)
    """Ranges ``[from, to)`` after the lake's mark that Kafka no longer holds (deleted by retention)."""


def covered_until(base: int, chunks: Sequence[ChunkKey]) -> int:
    """The first offset at or after ``base`` that no chunk covers (chunks of every kind but gaps)."""
    end = base
    for key in sorted((k for k in chunks if k.kind != GAPS), key=lambda k: (k.first_offset, k.last_offset)):
        if key.last_offset < end:
            continue
        if key.first_offset > end:
            break
        end = key.last_offset + 1
    return end


def start_positions(
    committed: Mapping[P, int | None],
    marks: Mapping[P, int | None],
    chunks: Mapping[P, Sequence[ChunkKey]],
    log_starts: Mapping[P, int | None],
    floors: Mapping[P, int] | None = None,
) -> StartPlan[P]:
    """The start of each partition in ``committed`` (see the module docstring).

    ``floors``: partitions whose lake went back under the worker (a table rolled back or
    restored: :class:`~k2.lake.writer.LakeRegressed`) start no later than their floor, the
    offset after the mark that table records now.
    """
    plan: StartPlan[P] = StartPlan()
    for tp, done in committed.items():
        mark = marks.get(tp)
        log_start = log_starts.get(tp)
        held = list(chunks.get(tp, ()))
        base: int | None = mark + 1 if mark is not None else log_start
        floor = (floors or {}).get(tp)
        if floor is not None:
            base = floor if base is None else min(base, floor)
            done = None if done is None else min(done, floor)
        if base is not None and log_start is not None and base < log_start:
            plan.lost[tp] = (base, log_start)
            base = log_start
        if base is None:
            start = done
        elif done is not None and done > base:
            start = min(covered_until(base, held), done)
        else:
            start = base
        plan.starts[tp] = start
        if start is not None:
            plan.discard[tp] = [k for k in held if k.first_offset >= start]
    return plan
