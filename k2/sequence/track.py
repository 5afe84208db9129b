"""One micro-batch through sequence tracking: verdicts, gap rows and state writes. Pure.

The only state is the :class:`~k2.sequence.book.SequenceBook` passed in (over a dict in
tests, over a Faust table's data in the worker); what must reach the changelog comes
back in :attr:`TrackResult.changes`, once per key and batch, never per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from k2.lake.records import BufferedEvent, GapRecord
from k2.sequence.book import Change, SequenceBook
from k2.sequence.classify import IN_ORDER, Outcome, Verdict, event_millis, fingerprint, severity

__all__ = ["TrackResult", "track"]


@dataclass
class TrackResult:
    """What a batch became, sequence-wise."""

    accepted: list[BufferedEvent] = field(default_factory=list)
    """Events bound for the market table, in batch order."""
    rejected: list[tuple[BufferedEvent, Verdict]] = field(default_factory=list)
    """Duplicates and conflicts, bound for the rejects."""
    gaps: list[GapRecord] = field(default_factory=list)
    """Gap rows of the batch, re-delivered ones included (so a rebuilt chunk is the chunk built before)."""
    new_gaps: list[GapRecord] = field(default_factory=list)
    """The gaps found for the first time (what metrics count)."""
    counts: dict[str, int] = field(default_factory=dict)
    """New decisions by outcome label, plus ``untracked`` (null sequence number), ``redelivered``
    (decided before a crash, not counted again) and ``unresolved`` (re-delivered beyond the log)."""
    changes: list[Change] = field(default_factory=list)

    def count(self, label: str, n: int = 1) -> None:
        self.counts[label] = self.counts.get(label, 0) + n


def track(topic: str, events: Sequence[BufferedEvent], book: SequenceBook, now_ms: int) -> TrackResult:
    """Classify the accepted events of a batch (in consumption order) and update ``book``.

    Events without a sequence number are accepted untracked. Per-event work: a dict
    lookup for the key's cursor, a fingerprint and a few comparisons.
    """
    out = TrackResult()
    accept = out.accepted.append
    size = book.size
    by_outcome = [0] * (max(Outcome) + 1)
    untracked = redelivered = unresolved = in_order = 0
    cursor_of = book.cursor
    for event in events:
        record = event.record
        seq = record.get("sequence_number")
        if seq is None:
            untracked += 1
            accept(event)
            continue
        exchange = record.get("exchange") or ""
        symbol = record["symbol"]
        event_ms = record["exchange_timestamp"]
        if type(event_ms) is not int:
            event_ms = event_millis(event_ms)
        verdict = cursor_of(event.partition, exchange, symbol).track(
            seq, event_ms, fingerprint(record), event.offset, size
        )
        if verdict is IN_ORDER:  # the common case first
            in_order += 1
            accept(event)
            continue
        if verdict.redelivered:
            redelivered += 1
            unresolved += verdict.unresolved
        else:
            by_outcome[verdict.outcome] += 1
        if verdict.rejected:
            out.rejected.append((event, verdict))
            continue
        accept(event)
        if verdict.outcome is Outcome.GAP:
            missing = seq - verdict.ref
            gap = GapRecord(
                topic,
                event.partition,
                event.offset,
                exchange,
                symbol,
                verdict.ref,
                seq,
                missing,
                severity(missing),
                event_ms,
                now_ms,
            )
            out.gaps.append(gap)
            if not verdict.redelivered:
                out.new_gaps.append(gap)
    by_outcome[Outcome.IN_ORDER] += in_order
    for outcome in Outcome:
        if by_outcome[outcome]:
            out.count(outcome.label, by_outcome[outcome])
    for label, n in (("untracked", untracked), ("redelivered", redelivered), ("unresolved", unresolved)):
        if n:
            out.count(label, n)
    out.changes = book.changes()
    return out
