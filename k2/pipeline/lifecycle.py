"""Where each source partition this worker holds is in its life: one owner, explicit states. Pure.

A partition is held from its assignment to its revocation, per consumer-group generation::

    assigned ──(faust restored this generation's tables and sought)──▶ positioning
    positioning ──(the lake's marks read, the start sought)──▶ consuming
    consuming ──(the lake went back under the worker, or faust sought again)──▶ positioning
    any ──(faust revokes it)──▶ revoking ──(the next assignment, without it)──▶ forgotten

Only a *consuming* partition's batches are taken, committed or flushed. faust tells K2 about
each step through four calls, in an order that overlapping rebalances scramble (a seek for
partitions no longer owned, a seek before this generation's tables are restored, a
revocation in the middle of positioning, the restore signal of an older generation): every
call here names its generation or checks the partition's, and anything of another
generation is ignored, so the partition's state is always that of the newest assignment.

Every transition is logged once, at info level. Nothing here does I/O or waits: the
positioning itself (the lake's marks, seeks) is :mod:`k2.pipeline.positioning`'s, which asks
:meth:`Lifecycle.to_position` what to do and reports back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from faust.types import TP

__all__ = ["Lifecycle", "PartitionState", "Phase"]

log = logging.getLogger(__name__)


class Phase(Enum):
    ASSIGNED = "assigned"
    """In this generation's assignment; faust is restoring its tables (buffer chunks, sequence state)."""
    POSITIONING = "positioning"
    """Tables restored and faust sought the committed offset: K2 reads the lake's marks and seeks its start."""
    CONSUMING = "consuming"
    """Positioned and resumed: its batches are taken, committed and flushed."""
    REVOKING = "revoking"
    """faust is revoking it: nothing new is taken, batches in flight settle."""


@dataclass(frozen=True)
class PartitionState:
    phase: Phase
    generation: int | None
    assigned_at: float
    """When this generation assigned it (monotonic seconds)."""
    since: float
    """When it entered its phase."""
    waiting_for: str | None = None
    """Why it is not consuming yet, when something outside K2 holds it up (shown by readiness)."""
    attempts: int = 0
    """Positioning attempts in this phase."""
    committed: int | None = None
    """The group's committed offset as faust last sought it (the next offset to read)."""


@dataclass
class Lifecycle:
    """The state of every partition this worker holds, and the generation they belong to."""

    clock: Callable[[], float] = time.monotonic
    generation: int | None = None
    """The newest generation faust assigned partitions in."""
    restored_generation: int | None = None
    """The newest generation whose tables faust has restored (``app.on_rebalance_complete``)."""
    restored_at: float | None = None
    """When that restore completed (monotonic seconds)."""
    _parts: dict[TP, PartitionState] = field(default_factory=dict)

    # -- what faust says ------------------------------------------------------------------

    def assigned(self, tps: Iterable[TP], generation: int) -> None:
        """faust assigned ``tps`` in ``generation`` (the whole assignment: anything else held is gone)."""
        tps = set(tps)
        now = self.clock()
        if self.generation is not None and generation < self.generation:
            log.info("assignment of generation %d ignored: generation %d is newer", generation, self.generation)
            return
        for tp in set(self._parts) - tps:
            self._drop(tp, f"not in the assignment of generation {generation}")
        self.generation = generation
        for tp in sorted(tps):
            self._parts[tp] = PartitionState(Phase.ASSIGNED, generation, assigned_at=now, since=now)
        if tps:
            log.info(
                "generation %d: %d partition(s) assigned, waiting for their tables: %s",
                generation,
                len(tps),
                _names(tps),
            )

    def revoking(self, tps: Iterable[TP]) -> set[TP]:
        """faust is revoking ``tps``; returns those that were held."""
        held = {tp for tp in tps if tp in self._parts}
        for tp in held:
            self._move(tp, Phase.REVOKING)
        if held:
            log.info("%d partition(s) revoking: %s", len(held), _names(held))
        return held

    def restored(self, generation: int | None) -> None:
        """faust restored the tables of ``generation`` (it seeks the stream partitions next)."""
        if generation is None or (self.restored_generation is not None and generation <= self.restored_generation):
            return
        self.restored_generation = generation
        self.restored_at = self.clock()

    def sought(self, committed: Mapping[TP, int | None]) -> set[TP]:
        """faust sought its assignment to the committed offsets: the partitions to position (again) now.

        Partitions of ``committed`` that are not held in the current generation are ignored (a
        seek's view of the assignment can be older than the revocation that followed it). Until
        the current generation's tables are restored nothing is positioned: faust seeks again
        after the restore, and that call positions them.
        """
        now = self.clock()
        ready = self.restored_generation is not None and self.restored_generation == self.generation
        out: set[TP] = set()
        for tp, offset in committed.items():
            state = self._parts.get(tp)
            if state is None or state.phase is Phase.REVOKING or state.generation != self.generation:
                continue
            self._parts[tp] = replace(state, committed=offset)
            if ready:
                out.add(tp)
                self._parts[tp] = replace(self._parts[tp], phase=Phase.POSITIONING, since=now, attempts=0)
        if out:
            log.info("generation %s: positioning %d partition(s): %s", self.generation, len(out), _names(out))
        return out

    # -- what positioning says ---------------------------------------------------------------

    def to_position(self) -> set[TP]:
        """Partitions waiting to be positioned, in the current generation."""
        return {tp for tp, s in self._parts.items() if s.phase is Phase.POSITIONING}

    def attempt(self, tps: Iterable[TP]) -> None:
        """A positioning attempt of ``tps`` begins."""
        for tp in tps:
            state = self._parts.get(tp)
            if state is not None and state.phase is Phase.POSITIONING:
                self._parts[tp] = replace(state, attempts=state.attempts + 1)

    def waiting(self, tps: Iterable[TP], why: str | None) -> None:
        """``tps`` cannot be positioned yet, for a reason outside K2 (None: no longer waiting)."""
        for tp in tps:
            state = self._parts.get(tp)
            if state is not None and state.phase is Phase.POSITIONING and state.waiting_for != why:
                if why is not None:
                    log.warning("%s/%d cannot be positioned yet: %s", tp.topic, tp.partition, why)
                self._parts[tp] = replace(state, waiting_for=why)

    def positioned(self, tps: Iterable[TP], generation: int | None) -> set[TP]:
        """``tps`` were sought to their start in ``generation``: those still positioning in it now consume."""
        done = set()
        for tp in tps:
            state = self._parts.get(tp)
            if state is None or state.phase is not Phase.POSITIONING or state.generation != generation:
                continue
            self._move(tp, Phase.CONSUMING)
            done.add(tp)
        if done:
            took = max(self._parts[tp].since - self._parts[tp].assigned_at for tp in done)
            log.info(
                "generation %s: %d partition(s) consuming, %.1fs after their assignment: %s",
                generation,
                len(done),
                took,
                _names(done),
            )
        return done

    def reposition(self, tps: Iterable[TP]) -> set[TP]:
        """Consuming partitions of ``tps`` go back to positioning (the lake lost history under the worker)."""
        out = {tp for tp in tps if (s := self._parts.get(tp)) is not None and s.phase is Phase.CONSUMING}
        for tp in out:
            self._move(tp, Phase.POSITIONING)
        if out:
            log.info("positioning %d partition(s) again: %s", len(out), _names(out))
        return out

    # -- questions ---------------------------------------------------------------------------

    def state(self, tp: TP) -> PartitionState | None:
        return self._parts.get(tp)

    def held(self) -> set[TP]:
        """Every partition held (any phase)."""
        return set(self._parts)

    def is_consuming(self, tp: TP) -> bool:
        state = self._parts.get(tp)
        return state is not None and state.phase is Phase.CONSUMING

    def consuming_set(self) -> set[TP]:
        return {tp for tp, s in self._parts.items() if s.phase is Phase.CONSUMING}

    def not_consuming(self) -> dict[TP, PartitionState]:
        """Held partitions that are not consuming (and not being revoked)."""
        return {tp: s for tp, s in self._parts.items() if s.phase in (Phase.ASSIGNED, Phase.POSITIONING)}

    def overdue(self, now: float, restore_bound_s: float, position_bound_s: float) -> dict[TP, str]:
        """Partitions not consuming past their bound, each with why: longer than ``restore_bound_s``
        waiting for faust's restore, or longer than ``position_bound_s`` positioning."""
        out: dict[TP, str] = {}
        for tp, s in self._parts.items():
            waited = now - s.since
            if s.phase is Phase.ASSIGNED and waited > restore_bound_s:
                out[tp] = f"assigned {waited:.0f}s ago, its tables not restored yet"
            elif s.phase is Phase.POSITIONING and waited > position_bound_s:
                why = f": {s.waiting_for}" if s.waiting_for else ""
                out[tp] = f"positioning for {waited:.0f}s ({s.attempts} attempt(s)){why}"
        return out

    def forget(self) -> None:
        """Forget everything (the consumer stopped)."""
        self._parts.clear()
        self.generation = None
        self.restored_generation = None
        self.restored_at = None

    # -- internals -----------------------------------------------------------------------------

    def _move(self, tp: TP, phase: Phase) -> None:
        state = self._parts[tp]
        self._parts[tp] = replace(state, phase=phase, since=self.clock(), waiting_for=None, attempts=0)

    def _drop(self, tp: TP, why: str) -> None:
        state = self._parts.pop(tp)
        if state.phase is not Phase.REVOKING:
            log.info("%s/%d forgotten (%s) while %s", tp.topic, tp.partition, why, state.phase.value)


def _names(tps: Iterable[TP]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps))
