"""Classify each event of a feed against the sequence numbers seen before it. Pure, no I/O.

Per (exchange, symbol), with trades and quotes numbered separately, an event with
sequence number ``s`` and event time ``t`` is compared with the key's last number ``L``
(the highest seen) and that event's time ``T``:

==============  ===========================================================  ==========
class           rule (checked in this order)                                 lands in
==============  ===========================================================  ==========
first           nothing known for the key yet: tracking starts at ``s``      market
in order        ``s == L + 1``                                               market
gap             ``s > L + 1``: ``s - L - 1`` numbers missing; *small* when    market, and
                fewer than 10 are missing (1-9), *large* from 10 on          a gap row
session reset   ``2 * s < L`` (strictly below half) **and** ``t - T > 1 h``  market
                (strictly more than an hour): start afresh, no alarm
duplicate       ``s`` seen before (within the window) at another offset,     rejects
                same payload
conflict        ``s`` seen before at another offset, different payload:      rejects
                the first is kept (``sequence_conflict``)
out of order    ``s <= L`` and not seen before, or too old for the window    market
==============  ===========================================================  ==========

Edges, decided and tested: 9 missing is small, 10 is large; exactly half (``2 * s == L``)
is *not* a reset; a jump of exactly one hour is *not* a reset. The reset test comes before
the duplicate test, because a new session repeats the numbers of the old one.

**Same payload** means the decoded record minus ``ingestion_timestamp``: that field is
stamped by whoever read the feed, so an exchange message received twice differs there
and only there (``k2 replay --inject-duplicates`` re-sends events exactly so). The
comparison uses a 32-bit fingerprint (:mod:`k2.sequence.fingerprint`); a collision could only turn
a conflict into a duplicate, and both are rejected, so it never changes where a record lands.

**The window** (``K2_DEDUP_WINDOW``, default 1000) bounds what is kept per key: the
fingerprint and offset of each of the last ``N`` sequence numbers (``s > L - N``). A
duplicate older than that cannot be told from a late event: it lands as out of order.

**Re-delivery is not duplication.** After a crash, Kafka re-delivers events at the offsets
they had, and the state (restored from its changelog) may already include them. Each key
remembers the last offset it applied (``applied``) and a log of the decisions that changed
where an event went (gaps, duplicates, conflicts, up to ``N`` of them): an event at or
below ``applied`` gets the decision it got the first time, so the chunks rebuilt from it
are the ones built before the crash, and the lake's offset marks drop what had landed.
A re-delivered event older than the log (more than ``N`` such decisions ago, for one key)
cannot be resolved; it is counted (``unresolved``) and treated as in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

__all__ = [
    "FIRST",
    "IN_ORDER",
    "LARGE_GAP_MIN",
    "RESET_AFTER_MS",
    "KeyState",
    "Outcome",
    "Verdict",
    "Window",
    "decide",
    "first",
    "severity",
]

LARGE_GAP_MIN = 10
"""A gap of this many missing numbers or more is large; fewer is small."""
RESET_AFTER_MS = 60 * 60 * 1000
"""A session reset needs the event time to jump by strictly more than this."""


class Outcome(IntEnum):
    """What an event is, sequence-wise. Stored in the decision log: values are stable."""

    FIRST = 1
    IN_ORDER = 2
    GAP = 3
    OUT_OF_ORDER = 4
    RESET = 5
    DUPLICATE = 6
    CONFLICT = 7

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def rejected(self) -> bool:
        return self in (Outcome.DUPLICATE, Outcome.CONFLICT)


_LOGGED = frozenset({Outcome.GAP, Outcome.DUPLICATE, Outcome.CONFLICT})
"""Decisions that change where an event goes (a gap row, a reject): the ones a re-delivery must find again."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """An event's class, and what goes with it.

    ``ref`` is the expected number (the first missing one) for a gap, the offset of the
    first event with that number for a duplicate or a conflict, 0 otherwise.
    """

    outcome: Outcome
    ref: int = 0
    redelivered: bool = False
    unresolved: bool = False

    @property
    def rejected(self) -> bool:
        return self.outcome.rejected


FIRST = Verdict(Outcome.FIRST)
IN_ORDER = Verdict(Outcome.IN_ORDER)
OUT_OF_ORDER = Verdict(Outcome.OUT_OF_ORDER)
RESET = Verdict(Outcome.RESET)
REDELIVERED_IN_ORDER = Verdict(Outcome.IN_ORDER, redelivered=True)
UNRESOLVED = Verdict(Outcome.IN_ORDER, redelivered=True, unresolved=True)


def severity(missing: int) -> str:
    """``small`` for 1-9 missing numbers, ``large`` from :data:`LARGE_GAP_MIN` on."""
    return "large" if missing >= LARGE_GAP_MIN else "small"


@dataclass(slots=True)
class KeyState:
    """What is kept per (partition, exchange, symbol) besides the window. Small: written once per batch.

    ``epoch`` counts session resets (the window of each session is kept apart, so a stale
    window of the old session can never be mistaken for the new one); ``low_block`` is
    the lowest window block that may still exist (see :mod:`k2.sequence.book`).
    """

    last: int
    last_time: int
    applied: int
    epoch: int = 0
    low_block: int = 0
    log: list[tuple[int, int, int]] = field(default_factory=list)
    """``(offset, outcome, ref)`` of recent gap, duplicate and conflict decisions, oldest first."""
    log_floor: int = -1
    """The offset of the newest decision dropped from the log; re-deliveries at or below it are unresolved."""
    _index: dict[int, tuple[int, int]] | None = None

    def remember(self, offset: int, outcome: Outcome, ref: int, capacity: int) -> None:
        self.log.append((offset, int(outcome), ref))
        if len(self.log) > capacity:
            dropped = self.log.pop(0)
            self.log_floor = dropped[0]
        self._index = None

    def redelivered(self, offset: int) -> Verdict:
        """The decision an event at ``offset`` (at or below ``applied``) got the first time."""
        if self._index is None:
            self._index = {o: (code, ref) for o, code, ref in self.log}
        hit = self._index.get(offset)
        if hit is not None:
            return Verdict(Outcome(hit[0]), hit[1], redelivered=True)
        if offset <= self.log_floor:
            return UNRESOLVED
        return REDELIVERED_IN_ORDER


class Window(Protocol):
    """The fingerprints and offsets of a key's recent sequence numbers (see :class:`k2.sequence.book.Cursor`)."""

    def get(self, seq: int) -> tuple[int, int] | None:
        """``(fingerprint, offset)`` of the first event seen with ``seq`` in this session, if kept."""
        ...

    def put(self, seq: int, fp: int, offset: int) -> None: ...

    def new_session(self, seq: int) -> None:
        """A session reset at ``seq``: forget the window and move the key's state to a new epoch."""
        ...


def decide(state: KeyState, window: Window, seq: int, time_ms: int, fp: int, offset: int, size: int) -> Verdict:
    """Classify one event of a key whose state exists, and update ``state`` and ``window``.

    Events of one key must come in offset order. ``size`` is the window (and decision
    log) size, ``K2_DEDUP_WINDOW``. For the first event of a key, see :func:`first`.
    """
    if offset <= state.applied:
        return state.redelivered(offset)
    state.applied = offset
    last = state.last
    if seq > last:
        window.put(seq, fp, offset)
        state.last = seq
        state.last_time = time_ms
        if seq == last + 1:
            return IN_ORDER
        state.remember(offset, Outcome.GAP, last + 1, size)
        return Verdict(Outcome.GAP, last + 1)
    if 2 * seq < last and time_ms - state.last_time > RESET_AFTER_MS:
        window.new_session(seq)
        state.last = seq
        state.last_time = time_ms
        window.put(seq, fp, offset)
        return RESET
    if seq <= last - size:
        return OUT_OF_ORDER  # older than the window: a late event or an old duplicate, cannot tell
    seen = window.get(seq)
    if seen is None:
        window.put(seq, fp, offset)
        return OUT_OF_ORDER
    first_fp, first_offset = seen
    if first_offset == offset:
        # The window already holds this very event: its changelog write landed before a
        # crash and the state's did not (blocks are written first). It was out of order.
        return OUT_OF_ORDER
    outcome = Outcome.DUPLICATE if first_fp == fp else Outcome.CONFLICT
    state.remember(offset, outcome, first_offset, size)
    return Verdict(outcome, first_offset)


def first(seq: int, time_ms: int, offset: int) -> KeyState:
    """The state a key starts with at its first event (whose verdict is :data:`FIRST`; put it in the window)."""
    return KeyState(last=seq, last_time=time_ms, applied=offset)
