"""One micro-batch through sequence tracking: verdicts, gap rows and state writes. Pure.

The rows come in their table's Arrow schema, in offset order: of one partition, or of several
joined (a fetch's partitions, in (partition, offset) order; a key is then (partition, exchange,
symbol), as its state is). The only
state is the :class:`~k2.sequence.book.SequenceBook` passed in (over a dict in tests, over
a Faust table's data in the worker); what must reach the changelog comes back in
:attr:`TrackResult.changes`, once per key and batch, never per event.

Per key (exchange, symbol), the common case is a run of consecutive numbers that simply
continues the key: it is checked and applied in one go (:meth:`~k2.sequence.book.Cursor.run`).
Any other run (a gap, a duplicate, a reset, a re-delivery, a key's first event) is
decided event by event by :func:`~k2.sequence.classify.decide`, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.arrow import SMALL_BATCH_ROWS
from k2.lake.records import GapRecord
from k2.lake.schemas import KAFKA_POSITION
from k2.sequence.book import Change, Cursor, SequenceBook
from k2.sequence.classify import IN_ORDER, Outcome, Verdict, severity
from k2.sequence.fingerprint import fingerprints

__all__ = ["NOT_PAYLOAD", "SHORT_RUN", "SMALL_BATCH", "TrackResult", "track"]

NOT_PAYLOAD = frozenset({"ingestion_timestamp", KAFKA_POSITION.partition_column, KAFKA_POSITION.offset_column})
"""Columns left out of the payload fingerprint: stamped by whoever read the feed, or by Kafka. An
exchange message received twice differs there and only there (``k2 replay --inject-duplicates``)."""

_ROW = "__k2_row"

SMALL_BATCH = SMALL_BATCH_ROWS
"""Rows below which a batch's keys are grouped in Python (see :data:`~k2.lake.arrow.SMALL_BATCH_ROWS`)."""

SHORT_RUN = 4
"""A key's events in a batch up to which they are decided one by one, not as a run (numpy's fixed cost)."""


@dataclass
class TrackResult:
    """What a batch became, sequence-wise."""

    keep: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=bool))
    """Per row: bound for the market table (False: a duplicate or a conflict)."""
    rejected: list[tuple[int, Verdict]] = field(default_factory=list)
    """Duplicates and conflicts (row index and verdict), bound for the rejects, in row order."""
    gaps: list[GapRecord] = field(default_factory=list)
    """Gap rows of the batch, re-delivered ones included (so a rebuilt chunk is the chunk built before)."""
    new_gaps: list[GapRecord] = field(default_factory=list)
    """The gaps found for the first time (what metrics count)."""
    counts: dict[str, int] = field(default_factory=dict)
    """New decisions by outcome label, plus ``untracked`` (null sequence number), ``redelivered``
    (decided before a crash, not counted again) and ``unresolved`` (re-delivered beyond the log)."""
    changes: list[Change] = field(default_factory=list)

    def count(self, label: str, n: int = 1) -> None:
        if n:
            self.counts[label] = self.counts.get(label, 0) + n


def track(topic: str, rows: pa.Table, book: SequenceBook, partition: int | None, now_ms: int) -> TrackResult:
    """Classify the rows of a batch (in log order) and update ``book``.

    ``rows`` has the columns ``exchange``, ``symbol``, ``sequence_number`` (nullable),
    ``exchange_timestamp``, ``kafka_partition`` and ``kafka_offset``, plus the payload. Rows
    without a sequence number are accepted untracked. ``partition`` is the batch's, or None
    for joined batches: each row's ``kafka_partition`` then says.
    """
    n = rows.num_rows
    out = TrackResult(keep=np.ones(n, dtype=bool))
    seq_column = rows.column("sequence_number")
    tracked = n - seq_column.null_count
    out.count("untracked", n - tracked)
    if not tracked:
        out.changes = book.changes()
        return out
    seqs = pc.fill_null(seq_column, 0).to_numpy()
    offsets = rows.column(KAFKA_POSITION.offset_column).to_numpy()
    times_ms = pc.divide(rows.column("exchange_timestamp").cast(pa.int64()), 1000).to_numpy()
    size = book.size
    plans: list[tuple[str, str, Cursor, np.ndarray, int, bool]] = []
    needed: list[np.ndarray] = []
    for key_partition, exchange, symbol, index in _key_groups(rows, seq_column, tracked < n, partition):
        cursor = book.cursor(key_partition, exchange, symbol)
        if len(index) <= SHORT_RUN:
            # Decided one by one: numpy's calls for a run of a few events cost more than they save.
            plans.append((exchange, symbol, cursor, index, len(index), False))
            needed.append(index)
            continue
        first = 1 if cursor.state is None else 0  # a key's first event is decided alone
        rest_seqs, rest_offsets = seqs[index[first:]], offsets[index[first:]]
        if first:
            is_run = len(rest_seqs) > 0 and int(rest_seqs[0]) == int(seqs[index[0]]) + 1 and _consecutive(rest_seqs)
        else:
            is_run = _continues_run(cursor, rest_seqs, rest_offsets)
        plans.append((exchange, symbol, cursor, index, first, is_run))
        # Fingerprints only where they are kept: a run writes its last `size` numbers to the window.
        needed.append(index[:first])
        needed.append(index[first:][-size:] if is_run else index[first:])
    wanted = np.concatenate(needed)
    if len(wanted) == n:  # every row (a permutation of them): no copy of the rows to take
        fps = fingerprints(rows, NOT_PAYLOAD)
    else:
        fps = np.zeros(n, dtype=np.uint32)
        fps[wanted] = fingerprints(rows.take(pa.array(wanted)), NOT_PAYLOAD)
    tally = _Tally(out, topic, size, now_ms, times_ms)
    seq_list, offset_list, fp_list = seqs.tolist(), offsets.tolist(), fps.tolist()
    for exchange, symbol, cursor, index, first, is_run in plans:
        if first == len(index):  # every event decided alone
            for row in index.tolist():
                tally.decide(cursor, exchange, symbol, row, seq_list[row], offset_list[row], fp_list[row])
            continue
        key_seqs, key_offsets, key_fps = seqs[index], offsets[index], fps[index]
        for j in range(first):
            tally.decide(cursor, exchange, symbol, int(index[j]), key_seqs[j], key_offsets[j], key_fps[j])
        if is_run:
            cursor.run(key_seqs[first:], int(times_ms[index[-1]]), key_fps[first:], key_offsets[first:], size)
            tally.by_outcome[Outcome.IN_ORDER] += len(index) - first
            continue
        for j in range(first, len(index)):
            tally.decide(cursor, exchange, symbol, int(index[j]), key_seqs[j], key_offsets[j], key_fps[j])
    out.rejected.sort(key=lambda item: item[0])
    out.gaps.sort(key=_log_order)
    out.new_gaps.sort(key=_log_order)
    for outcome in Outcome:
        out.count(outcome.label, tally.by_outcome[outcome])
    out.count("redelivered", tally.redelivered)
    out.count("unresolved", tally.unresolved)
    out.changes = book.changes()
    return out


@dataclass
class _Tally:
    """Decides single events of a batch (the cases a run does not cover) and counts what was decided."""

    out: TrackResult
    topic: str
    size: int
    now_ms: int
    times_ms: np.ndarray
    by_outcome: list[int] = field(default_factory=lambda: [0] * (max(Outcome) + 1))
    redelivered: int = 0
    unresolved: int = 0

    def decide(self, cursor: Cursor, exchange: str, symbol: str, row: int, seq: Any, offset: Any, fp: Any) -> None:
        seq, offset, event_ms = int(seq), int(offset), int(self.times_ms[row])
        verdict = cursor.track(seq, event_ms, int(fp), offset, self.size)
        if verdict is IN_ORDER:
            self.by_outcome[Outcome.IN_ORDER] += 1
            return
        if verdict.redelivered:
            self.redelivered += 1
            self.unresolved += verdict.unresolved
        else:
            self.by_outcome[verdict.outcome] += 1
        if verdict.rejected:
            self.out.keep[row] = False
            self.out.rejected.append((row, verdict))
        elif verdict.outcome is Outcome.GAP:
            missing = seq - verdict.ref
            gap = GapRecord(
                self.topic,
                cursor.partition,
                offset,
                exchange,
                symbol,
                verdict.ref,
                seq,
                missing,
                severity(missing),
                event_ms,
                self.now_ms,
            )
            self.out.gaps.append(gap)
            if not verdict.redelivered:
                self.out.new_gaps.append(gap)


def _log_order(gap: GapRecord) -> tuple[int, int]:
    return (gap.partition, gap.offset)


def _key_groups(
    rows: pa.Table, seq_column: pa.ChunkedArray, some_null: bool, partition: int | None
) -> list[tuple[int, str, str, np.ndarray]]:
    """Per key (partition, exchange, symbol), in order of first appearance, its rows with a sequence number.

    ``partition`` None: the rows join several partitions' batches, and each row's says.
    """
    n = rows.num_rows
    valid = seq_column.is_valid() if some_null else None
    by_row = partition is None
    if n < SMALL_BATCH:
        flags = valid.to_pylist() if valid is not None else None
        parts = rows.column(KAFKA_POSITION.partition_column).to_pylist() if by_row else repeat(partition, n)
        members: dict[tuple[int, str, str], list[int]] = {}
        keys = zip(parts, rows.column("exchange").to_pylist(), rows.column("symbol").to_pylist(), strict=False)
        for row, key in enumerate(keys):
            if flags is None or flags[row]:
                members.setdefault(key, []).append(row)
        return [
            (p, exchange or "", symbol, np.asarray(at, dtype=np.int64)) for (p, exchange, symbol), at in members.items()
        ]
    columns = {"exchange": rows.column("exchange"), "symbol": rows.column("symbol")}
    if by_row:
        columns[KAFKA_POSITION.partition_column] = rows.column(KAFKA_POSITION.partition_column)
    table = pa.table({**columns, _ROW: pa.array(np.arange(n, dtype=np.int64))})
    if valid is not None:
        table = table.filter(valid)
    groups = table.group_by(list(columns), use_threads=False).aggregate([(_ROW, "list")])
    key_parts = groups.column(KAFKA_POSITION.partition_column).to_pylist() if by_row else repeat(partition, len(groups))
    return [
        (p, exchange or "", symbol, np.sort(np.asarray(at, dtype=np.int64)))
        for p, exchange, symbol, at in zip(
            key_parts,
            groups.column("exchange").to_pylist(),
            groups.column("symbol").to_pylist(),
            groups.column(f"{_ROW}_list").to_pylist(),
            strict=False,
        )
    ]


def _continues_run(cursor: Cursor, seqs: np.ndarray, offsets: np.ndarray) -> bool:
    """Whether ``seqs`` are consecutive and the first continues the key (see :meth:`Cursor.continues`)."""
    return len(seqs) > 0 and cursor.continues(int(seqs[0]), int(offsets[0])) and _consecutive(seqs)


def _consecutive(seqs: np.ndarray) -> bool:
    """Whether ``seqs`` go up by one each (Python ints for the span: numpy's int64 difference wraps)."""
    return int(seqs[-1]) - int(seqs[0]) == len(seqs) - 1 and bool((np.diff(seqs) == 1).all())
