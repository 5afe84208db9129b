"""A worker's takeover after a SIGKILL, measured from the outside: what the survivor restored, and when it consumed.

What a new owner restores is read from faust's own recovery log (its tables "Highwater - Active" and
"Reading Starts At - Active": per changelog partition the offsets it reads) and counted in Kafka:
the records those offset ranges hold now, at the start of the restore. On a compacted changelog the
offsets spanned and the records read differ (faust's "remaining" counts offsets); the records are
what costs time. Counting at the start of the restore is an upper bound of what the worker reads
(the cleaner only removes records meanwhile).

When it consumes again is read from Kafka too: a sequence-state changelog is written only when a
batch of its source partition is processed, so the first write to it past the restore's highwater
is the survivor consuming that partition (its end offset, polled).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from tests.faults.deployment import Deployment
from tests.faults.processes import Worker
from tests.faults.source import TP, reader

__all__ = [
    "DEFAULT_FLUSH_MAX_ROWS",
    "RecoveryRound",
    "Takeover",
    "buffer_bound",
    "count_records",
    "measure_takeover",
    "recovery_rounds",
]

DEFAULT_FLUSH_MAX_ROWS = 200_000
"""K2's default ``K2_FLUSH_MAX_ROWS`` (README, Configuration); the buffer holds at most twice that many events."""

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*)$")
_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|\s*$")
_DITTO = "\u3003"


def buffer_bound(env: Mapping[str, str]) -> int:
    """Events the worker's buffer holds at most: twice ``K2_FLUSH_MAX_ROWS`` (backpressure, README)."""
    return 2 * int(env.get("K2_FLUSH_MAX_ROWS") or DEFAULT_FLUSH_MAX_ROWS)


@dataclass
class RecoveryRound:
    """One table recovery of a worker, as its log tells it (times: seconds since the epoch, local clock)."""

    highwater_at: float
    highwaters: dict[TP, int] = field(default_factory=dict)
    starts_at: float | None = None
    starts: dict[TP, int] = field(default_factory=dict)
    ready_at: float | None = None

    def ranges(self) -> dict[TP, tuple[int, int]]:
        """Per changelog partition the offsets read, first and last inclusive (faust starts after ``start``)."""
        out = {}
        for tp, high in self.highwaters.items():
            first = max(self.starts.get(tp, -1), -1) + 1
            if high >= first:
                out[tp] = (first, high)
        return out

    @property
    def offsets(self) -> int:
        """Offsets spanned: what faust's own recovery log calls "remaining" at the start."""
        return sum(last - first + 1 for first, last in self.ranges().values())


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _table(lines: list[str], i: int) -> tuple[dict[TP, int] | None, int]:
    """The rows of the faust log table starting at ``lines[i]`` (topic, partition, number; ditto marks resolved),
    or None while the log holds only part of it (a worker's log is read as it is written)."""
    rows: dict[TP, int] = {}
    topic = ""
    borders = 0
    while i < len(lines) and lines[i].startswith(("+", "|")):
        borders += lines[i].startswith("+")
        match = _ROW.match(lines[i])
        if match and match.group(2).isdigit():
            name = match.group(1)
            topic = topic if name == _DITTO else name
            rows[(topic, int(match.group(2)))] = int(match.group(3))
        i += 1
    complete = borders >= 3 and lines[i - 1].rstrip().endswith("+")  # its bottom border, written whole
    return (rows if complete else None), i


def recovery_rounds(text: str) -> list[RecoveryRound]:
    """Every active-table recovery in a faust worker's log (``-l info``), in order."""
    rounds: list[RecoveryRound] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _STAMP.match(lines[i])
        i += 1
        if not match:
            continue
        at, message = _stamp(match.group(1)), match.group(2)
        if "Highwater for active changelog partitions" in message:
            rows, i = _table(lines, i)
            if rows is None:
                break
            rounds.append(RecoveryRound(at, rows))
        elif "active offsets at start of reading" in message and rounds:
            rows, i = _table(lines, i)
            if rows is None:
                break
            rounds[-1].starts, rounds[-1].starts_at = rows, at
        elif message.rstrip().endswith("Worker ready") and rounds and rounds[-1].ready_at is None:
            rounds[-1].ready_at = at
    return rounds


def count_records(
    bootstrap: str, ranges: Mapping[TP, tuple[int, int]], timeout_s: float = 600.0
) -> tuple[int, int, bool]:
    """(records, value bytes, complete) in ``ranges`` (per partition first and last offset, inclusive)."""
    if not ranges:
        return 0, 0, True
    consumer = reader(bootstrap, "k2-faults-changelog-count", eof=True)
    records = size = 0
    remaining = dict(ranges)
    try:
        consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _last) in ranges.items()])
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                tp = (msg.topic(), msg.partition())
                if tp not in remaining:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(tp)
                    continue
                offset, last = msg.offset(), remaining[tp][1]
                if offset is None:
                    continue
                if offset <= last:
                    records += 1
                    size += len(msg.value() or b"")
                if offset >= last:
                    remaining.pop(tp)
    finally:
        consumer.close()
    return records, size, not remaining


class _Count:
    """:func:`count_records` in a thread, started as soon as a restore's ranges are known."""

    def __init__(self, bootstrap: str, ranges: Mapping[TP, tuple[int, int]]) -> None:
        self.result: tuple[int, int, bool] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(bootstrap, dict(ranges)), daemon=True)
        self._thread.start()

    def _run(self, bootstrap: str, ranges: dict[TP, tuple[int, int]]) -> None:
        try:
            self.result = count_records(bootstrap, ranges)
        except BaseException as exc:  # reported as the measurement's note, not lost in a thread
            self.error = exc

    def join(self, timeout_s: float) -> tuple[int, int, bool] | None:
        self._thread.join(timeout_s)
        return self.result


@dataclass
class Takeover:
    """One SIGKILL and the survivor's takeover, for the fault report (seconds, records, MB)."""

    victim: str
    survivor: str
    uptime_s: float
    buffer_bound: int
    restored_records: int | None = None
    restored_mb: float | None = None
    restored_offsets: int | None = None
    restored_partitions: int | None = None
    kill_to_rebalance_s: float | None = None
    restore_s: float | None = None
    kill_to_ready_s: float | None = None
    #: kill -> the first partition with events consumed again; ``takeover_s``: every one of them
    first_consumed_s: float | None = None
    takeover_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bounded(self) -> bool | None:
        """Restored records at most twice the buffer's bound (None: not counted)."""
        return None if self.restored_records is None else self.restored_records <= 2 * self.buffer_bound

    def as_report(self) -> dict[str, Any]:
        """The report's entry: every field, whether the restore was bounded, and the printed line."""
        return {**asdict(self), "bounded": self.bounded, "line": self.line()}

    def line(self) -> str:
        def num(value: float | int | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        return (
            f"{self.uptime_s / 60:.1f}min: restored {num(self.restored_records, ',')} records "
            f"({num(self.restored_mb, '.1f')} MB, {num(self.restored_offsets, ',')} offsets) vs buffer bound "
            f"{self.buffer_bound:,}; takeover {num(self.takeover_s, '.1f')}s "
            f"(rebalance {num(self.kill_to_rebalance_s, '.1f')}s, restore {num(self.restore_s, '.1f')}s, "
            f"first partition {num(self.first_consumed_s, '.1f')}s)"
        )


def measure_takeover(
    dep: Deployment,
    victim: Worker,
    survivor: Worker,
    uptime_s: float,
    tick: Callable[[], None],
    timeout_s: float = 300.0,
) -> Takeover:
    """SIGKILL ``victim`` and follow ``survivor`` until it consumes every partition that received events meanwhile.

    ``tick`` is called between polls (the scenario notices crashes there). Bounded by ``timeout_s``; what
    could not be measured in time stays None, with a note.
    """
    result = Takeover(victim.name, survivor.name, round(uptime_s, 1), buffer_bound(dep.env))
    sources = (dep.topics["trades"], dep.topics["quotes"])
    before = dep.end_offsets(sources)
    log_from = survivor.log.stat().st_size
    killed_at = time.time()
    victim.kill()
    deadline = time.monotonic() + timeout_s
    rounds: list[RecoveryRound] = []
    counts: dict[int, _Count] = {}
    while time.monotonic() < deadline:
        tick()
        with survivor.log.open("rb") as fh:
            fh.seek(log_from)
            rounds = recovery_rounds(fh.read().decode(errors="replace"))
        for i, rnd in enumerate(rounds):
            if rnd.starts_at is not None and i not in counts:  # count what this restore reads, now
                counts[i] = _Count(dep.bootstrap, rnd.ranges())
        if rounds and rounds[-1].ready_at is not None:
            break
        time.sleep(0.2)
    started = [i for i, rnd in enumerate(rounds) if rnd.starts_at is not None]
    if not started:
        result.notes.append(f"{survivor.name} did not start a restore within {timeout_s:.0f}s of the kill")
        return result
    last = rounds[started[-1]]
    if len(rounds) > 1:
        result.notes.append(f"{survivor.name} restored {len(rounds)} times after the kill (rebalanced again)")
    result.kill_to_rebalance_s = round(rounds[0].highwater_at - killed_at, 2)
    result.restored_offsets = last.offsets
    result.restored_partitions = len(last.ranges())
    counted = counts[started[-1]].join(max(1.0, deadline - time.monotonic()))
    if counted is None:
        result.notes.append("counting the restored records did not finish in time")
    else:
        records, size, complete = counted
        result.restored_records, result.restored_mb = records, round(size / 1e6, 1)
        if not complete:
            result.notes.append("the count of restored records stopped short of the highwater (partial)")
    if last.ready_at is None:  # what it had to read is known; how long it took is not
        result.notes.append(f"{survivor.name} did not finish its restore within {timeout_s:.0f}s of the kill")
        return result
    result.restore_s = round(last.ready_at - (last.starts_at or last.highwater_at), 2)
    result.kill_to_ready_s = round(last.ready_at - killed_at, 2)
    result.first_consumed_s, result.takeover_s = _first_writes(
        dep, sources, before, last, killed_at, deadline, tick, result.notes
    )
    return result


def _first_writes(
    dep: Deployment,
    sources: tuple[str, str],
    before: Mapping[TP, int],
    restore: RecoveryRound,
    killed_at: float,
    deadline: float,
    tick: Callable[[], None],
    notes: list[str],
) -> tuple[float | None, float | None]:
    """Seconds from the kill until the first, and until every, source partition that received events since
    then is consumed again: its sequence-state changelog written past the restore's highwater (only a
    processed batch writes it)."""
    pending = {tp for tp, end in dep.end_offsets(sources).items() if end > before.get(tp, 0)}
    app_id = dep.env["K2_APP_ID"]
    changelogs = {(f"{app_id}-sequences-{topic}-changelog", partition) for topic, partition in pending}
    watched = {tp: restore.highwaters.get(tp, -1) for tp in changelogs}
    if not watched:
        notes.append("no source partition received events after the kill: consuming again was not observable")
        return None, None
    first: float | None = None
    consumer = Consumer({"bootstrap.servers": dep.bootstrap, "group.id": "k2-faults-takeover"})
    try:
        while time.monotonic() < deadline:
            tick()
            for tp, high in list(watched.items()):
                _low, end = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10)
                if end - 1 > high:
                    watched.pop(tp)
                    first = first or round(time.time() - killed_at, 2)
            if not watched:
                return first, round(time.time() - killed_at, 2)
            time.sleep(0.2)
    finally:
        consumer.close()
    notes.append(f"not consumed again within the deadline: {sorted(watched)}")
    return first, None
