"""The law, judged for one source partition: what is missing, what is doubled, what is unmarked. Pure.

For a (topic, partition), the lake's *mark* is the highest offset any table's snapshot
summary records for it: K2 says it has landed everything up to there. So every offset
of ``[log start, mark]`` that holds a record in Kafka must be a row of exactly one of
the tables the law names (the topic's own table, or the rejects). Offsets above the
mark are lake lag, not judged, unless the audit judges *to the end*: then the window
runs to Kafka's end (the last stable offset) whatever the marks say, and what did not
land is missing. Offsets below the log start are gone from Kafka and can only be judged
for doubling. A row above *its own table's* mark breaks the bookkeeping exactly-once
rests on (a restarted worker would land that offset again), so it fails the audit too,
as does a mark Kafka has not reached (another cluster, a re-created topic) or a mark in
a transaction that is still open.

Kafka is read ``read_committed``: a record of an aborted transaction is not a record,
and a row at its offset (or at a transaction's control marker) is a row Kafka does not
hold, which fails the audit (``not_committed``).

Holes found here are only *candidates*: a transaction's control marker, an aborted
record or a compacted record leaves an offset no ``read_committed`` consumer sees.
:func:`confirm_missing` keeps the ones Kafka shows a record at; the I/O that asks Kafka
lives in :mod:`k2.audit.kafka`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from k2.audit.ranges import EMPTY, Ranges, as_int64, holes, intersect, repeated, runs, sorted_offsets, unique_sorted

__all__ = ["PartitionVerdict", "TableOffsets", "confirm_missing", "judge_partition", "still_missing"]


@dataclass(frozen=True)
class TableOffsets:
    """The offsets one table's rows carry for one source partition, and that table's own mark for it."""

    table: str
    offsets: pa.Array | pa.ChunkedArray
    mark: int | None = None
    """What the table's audited snapshot records for the partition; None when it records nothing."""


@dataclass(frozen=True)
class PartitionVerdict:
    """Everything the audit found for one source partition."""

    topic: str
    partition: int
    log_start: int
    log_end: int
    """Kafka's end for a ``read_committed`` reader: the last stable offset (the high watermark when no
    transaction is open)."""
    mark: int | None
    """The lake's mark (highest offset any table records); None when no table records this partition."""
    rows: Mapping[str, int]
    """Rows per law table carrying this partition (at any offset)."""
    missing: Ranges = EMPTY
    """Offsets of the judged window in no table; after :func:`confirm_missing`, only those Kafka holds a record at."""
    verified: bool = False
    """Whether ``missing`` is what Kafka confirmed (False: candidates, markers and compaction not told apart yet;
    True as well when there was nothing to ask about)."""
    no_record: int = 0
    """Holes of the window where Kafka holds no record (control markers, compaction, retention): not missing."""
    doubled: Ranges = EMPTY
    """Offsets in more than one row across the law tables, anywhere (also below the log start)."""
    doubled_rows: Mapping[str, int] = field(default_factory=dict)
    """Rows at doubled offsets, per table (which tables the doubles are in)."""
    beyond_mark: Mapping[str, Ranges] = field(default_factory=dict)
    """Per table, offsets of its rows above that table's own mark."""
    gaps_doubled: Ranges = EMPTY
    """Source offsets of ``market_data.sequence_gaps`` rows that appear more than once."""
    table_marks: Mapping[str, int | None] = field(default_factory=dict)
    """Each table's own mark for this partition (None: it records none)."""
    in_kafka: bool = True
    """False for a partition the lake knows but Kafka does not (log bounds then read as 0)."""
    log_high: int | None = None
    """Kafka's high watermark, above ``log_end`` while a transaction is open (None: not known, take ``log_end``)."""
    to_end: bool = False
    """Whether the window runs to ``log_end`` (everything Kafka holds is judged) rather than to the mark."""
    not_committed: Ranges = EMPTY
    """Offsets of rows in the window where ``read_committed`` Kafka holds no record: records of aborted
    transactions, control markers (on a compacted topic only what an uncommitted reader still sees)."""
    committed_read: bool = False
    """Whether the whole window was read from Kafka, so ``not_committed`` was judged."""
    waiting_from: int | None = None
    """The first record above the mark Kafka holds (None: not asked, or none below the end)."""

    @property
    def lost_to_retention(self) -> Ranges:
        """Offsets after the lake's mark that Kafka deleted before they landed: lost, and nothing can land them.

        Only judged where the lake records the partition (a lake that never covered it
        started at Kafka's log start, wherever retention had put it).
        """
        if self.mark is None or not self.in_kafka or self.mark + 1 >= self.log_start:
            return EMPTY
        return Ranges.of((self.mark + 1, self.log_start - 1))

    @property
    def checked_to(self) -> int:
        """The last offset judged: the mark (the end, judged to the end), or the last offset Kafka has if the mark
        is beyond it."""
        return _last_judged(self.mark, self.log_end, to_end=self.to_end)

    @property
    def checked(self) -> int:
        """How many offsets ``[log start, checked_to]`` spans."""
        return max(0, self.checked_to - self.log_start + 1)

    @property
    def waiting(self) -> int:
        """Offsets from the first record above the mark to the end: what is not landed yet.

        Counted from the first record Kafka holds above the mark once asked (``waiting_from``), so
        trailing control markers and aborted records are no lag; from the mark until then.
        """
        if self.waiting_from is not None:
            return max(0, self.log_end - self.waiting_from)
        landed_to = -1 if self.mark is None else self.mark
        return max(0, self.log_end - max(self.log_start, landed_to + 1))

    @property
    def lag(self) -> int:
        """Offsets above the mark that are not judged (lake lag); none when judged to the end."""
        return 0 if self.to_end else self.waiting

    @property
    def high(self) -> int:
        """The high watermark (``log_end`` when not known)."""
        return self.log_end if self.log_high is None else max(self.log_high, self.log_end)

    @property
    def open(self) -> bool:
        """Whether a transaction is open: offsets between the end and the high watermark not committed yet."""
        return self.high > self.log_end

    @property
    def mark_beyond_end(self) -> bool:
        """The lake claims offsets Kafka never wrote."""
        return self.mark is not None and self.mark >= self.high

    @property
    def mark_in_open_transaction(self) -> bool:
        """The lake claims offsets of a transaction still open: records that may yet be aborted."""
        return self.mark is not None and self.log_end <= self.mark < self.high

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.lost_to_retention
            or self.doubled
            or self.gaps_doubled
            or self.mark_beyond_end
            or self.mark_in_open_transaction
            or self.not_committed
            or any(self.beyond_mark.values())
            or not self.in_kafka
        )


def _concat(arrays: Sequence[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], pa.int64())
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _last_judged(mark: int | None, log_end: int, *, to_end: bool = False) -> int:
    """Kafka's last offset judged to the end; else the mark, or Kafka's last offset when the mark is beyond it
    (-1 when nothing is marked)."""
    return log_end - 1 if to_end else min(-1 if mark is None else mark, log_end - 1)


def _above(offsets: pa.Array, mark: int | None) -> Ranges:
    """Runs of the distinct offsets above ``mark`` (all of them when there is no mark)."""
    high = offsets if mark is None else offsets.filter(pc.greater(offsets, mark))
    return runs(unique_sorted(sorted_offsets(high))) if len(high) else EMPTY


def judge_partition(
    topic: str,
    partition: int,
    *,
    log_start: int,
    log_end: int,
    lake_mark: int | None,
    landed: Sequence[TableOffsets],
    gaps: TableOffsets | None = None,
    upserted: Sequence[TableOffsets] = (),
    in_kafka: bool = True,
    log_high: int | None = None,
    to_end: bool = False,
    committed: pa.Array | None = None,
    uncommitted: pa.Array | None = None,
) -> PartitionVerdict:
    """Judge one partition.

    Args:
        log_start, log_end: Kafka's log start and last stable offset for the partition.
        log_high: its high watermark (above ``log_end`` while a transaction is open).
        lake_mark: the highest offset any table records for it (:meth:`LakeRead.mark`).
        landed: the law tables (the topic's own and the rejects): each offset in exactly one row.
        gaps: ``market_data.sequence_gaps`` rows revealed by this partition: never two at one offset.
        upserted: tables only held to their marks (``reference_data.companies``: its rows are
            judged by :mod:`k2.audit.companies`, and superseded versions leave it by design).
        to_end: judge up to ``log_end`` whatever the mark: what did not land is missing.
        committed: the offsets ``read_committed`` Kafka holds records at, read over the whole window:
            then the holes are confirmed from it (no further read) and rows where it holds
            nothing are ``not_committed``.
        uncommitted: on a compacted topic, the offsets a ``read_uncommitted`` reader sees over the
            window: a row where neither sees a record was compacted away after it landed, no fault.
    """
    law = [(t, as_int64(t.offsets)) for t in landed]
    others = [(t, as_int64(t.offsets)) for t in (*upserted, *([gaps] if gaps is not None else []))]
    everything = sorted_offsets(_concat([values for _, values in law]))
    doubled = repeated(everything)
    doubled_rows = {}
    if len(doubled):
        hits = {t.table: int(pc.sum(pc.is_in(values, value_set=doubled)).as_py() or 0) for t, values in law}
        doubled_rows = {table: n for table, n in hits.items() if n}
    beyond = {t.table: _above(values, t.mark) for t, values in (*law, *others)}
    landed = unique_sorted(everything)
    last = _last_judged(lake_mark, log_end, to_end=to_end)
    missing = holes(landed, log_start, last)
    no_record = 0
    not_committed = EMPTY
    if committed is not None:
        held = _window(sorted_offsets(committed), log_start, last)
        confirmed = intersect(missing, runs(unique_sorted(held))) if len(held) else EMPTY
        no_record = missing.count - confirmed.count
        missing = confirmed
        rows_in_window = _window(landed, log_start, last)
        stray = pc.invert(pc.is_in(rows_in_window, value_set=held))
        extra = rows_in_window.filter(stray)
        if uncommitted is not None:
            extra = extra.filter(pc.is_in(extra, value_set=as_int64(uncommitted)))
        not_committed = runs(extra) if len(extra) else EMPTY
    return PartitionVerdict(
        topic,
        partition,
        log_start,
        log_end,
        lake_mark,
        rows={t.table: len(values) for t, values in law},
        missing=missing,
        verified=committed is not None or not missing,
        no_record=no_record,
        doubled=runs(doubled),
        doubled_rows=doubled_rows,
        beyond_mark={table: r for table, r in beyond.items() if r},
        gaps_doubled=runs(repeated(sorted_offsets(gaps.offsets))) if gaps is not None else EMPTY,
        table_marks={t.table: t.mark for t, _ in (*law, *others)},
        in_kafka=in_kafka,
        log_high=log_high,
        to_end=to_end,
        not_committed=not_committed,
        committed_read=committed is not None,
    )


def _window(sorted_values: pa.Array, low: int, high: int) -> pa.Array:
    """The values of an ascending array within ``[low, high]``."""
    inside = pc.and_(pc.greater_equal(sorted_values, low), pc.less_equal(sorted_values, high))
    return sorted_values.filter(inside)


def confirm_missing(verdict: PartitionVerdict, present: pa.Array | pa.ChunkedArray) -> PartitionVerdict:
    """``verdict`` with ``missing`` cut down to the offsets where Kafka holds a record.

    Args:
        present: offsets Kafka returned records at, read over (at least) the candidate
            ranges; offsets outside them are ignored.
    """
    held = runs(unique_sorted(sorted_offsets(present))) if len(present) else EMPTY
    confirmed = intersect(verdict.missing, held)
    return replace(verdict, missing=confirmed, verified=True, no_record=verdict.missing.count - confirmed.count)


def still_missing(first: PartitionVerdict, later: PartitionVerdict) -> PartitionVerdict:
    """``later`` (a re-read after settling) keeping only offsets missing in both reads.

    An offset missing at the first read but present at the second was a flush in flight;
    one missing only at the second is a newer flush in flight. Only what stayed missing
    while the lake moved on is a violation. Kafka was asked about the first read's holes
    only, so the result carries its verification.
    """
    return replace(
        later,
        missing=intersect(first.missing, later.missing),
        verified=first.verified,
        no_record=first.no_record,
        # Rows never leave the lake: what the first read found not committed in Kafka stands.
        not_committed=first.not_committed,
        committed_read=first.committed_read,
    )
