"""A second life for rejects: list them, and send chosen ones back to their source, each exactly once.

A reject keeps its record's key, value and headers (``market_data.rejects``). Once the
cause is fixed (a schema registered, a rule relaxed), :func:`redrive` sends those bytes back
to the source topic, to the partition they came from, with a header ``k2.redrive.from``
naming the original position. The reject row stays as history; the new record lands like
any other (so ``k2 audit`` counts every offset once: the old one in the rejects, the new one
where it lands), and ``market_data.redrives`` links the two positions.

Each redrive is exactly once, whatever fails when:

1. an *intent* row is committed first: the run's id, and the end offsets of the partitions
   it will write to;
2. the records are produced (idempotent producer, acks=all) and their new offsets noted;
3. one commit then adds a *link* row per record and a *done* row for the run.

A run that died between 1 and 3 leaves an intent without its done row. The next run first
*recovers* it: it reads those partitions from the intent's end offsets for records carrying
``k2.redrive.from``, and records the links of what was sent. So a reject is linked at most
once, and a linked one is never sent again: replaying the same selection twice sends
nothing the second time.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, In

from k2.lake.arrow import arrow_schema
from k2.lake.schemas import REDRIVES, REJECTS, TABLES

__all__ = [
    "REDRIVE_HEADER",
    "Position",
    "RedriveLog",
    "RedriveResult",
    "Selection",
    "read_rejects",
    "redrive",
]

REDRIVE_HEADER = "k2.redrive.from"
"""Header of a redriven record: ``topic/partition/offset`` of the record it was rejected as."""

Position = tuple[str, int, int]
"""A record's ``(topic, partition, offset)``."""


@dataclass(frozen=True)
class Selection:
    """Which rejects: by reason, source topic and time (None: any)."""

    reasons: tuple[str, ...] = ()
    topic: str | None = None
    since: datetime | None = None

    def expression(self) -> BooleanExpression:
        expr: BooleanExpression = AlwaysTrue()
        if self.reasons:
            expr = And(expr, In(term="reason", literals=set(self.reasons)))
        if self.topic is not None:
            expr = And(expr, EqualTo(term="source_topic", value=self.topic))
        if self.since is not None:
            expr = And(expr, GreaterThanOrEqual(term="rejected_at", value=self.since.isoformat()))
        return expr


def read_rejects(catalog: Catalog, selection: Selection) -> pa.Table:
    """The chosen rejects, in source position order."""
    table = catalog.load_table(TABLES[REJECTS].name).scan(row_filter=selection.expression()).to_arrow()
    return table.sort_by(
        [("source_topic", "ascending"), ("source_partition", "ascending"), ("source_offset", "ascending")]
    )


def encode_position(position: Position) -> bytes:
    topic, partition, offset = position
    return f"{topic}/{partition}/{offset}".encode()


def decode_position(raw: bytes | None) -> Position | None:
    """The position a ``k2.redrive.from`` header names (None when it names none)."""
    if raw is None:
        return None
    topic, sep, rest = raw.decode(errors="replace").rpartition("/")
    head, sep2, partition = topic.rpartition("/")
    if not sep or not sep2 or not partition.isdigit() or not rest.isdigit():
        return None
    return head, int(partition), int(rest)


@dataclass
class RedriveLog:
    """``market_data.redrives`` as read: what is linked, and runs that did not finish."""

    links: dict[Position, tuple[int, int]] = field(default_factory=dict)
    """Original position -> (new partition, new offset)."""
    unfinished: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    """Run id -> the end offsets its intent recorded, for runs without a done row."""

    @classmethod
    def read(cls, catalog: Catalog) -> RedriveLog:
        rows = catalog.load_table(TABLES[REDRIVES].name).scan().to_arrow().to_pylist()
        log = cls()
        done = {r["run_id"] for r in rows if r["kind"] == "done"}
        for r in rows:
            if r["kind"] == "link":
                log.links[(r["source_topic"], r["source_partition"], r["source_offset"])] = (
                    r["to_partition"],
                    r["to_offset"],
                )
            elif r["kind"] == "intent" and r["run_id"] not in done:
                ends = json.loads(r["detail"] or "{}")
                log.unfinished[r["run_id"]] = {
                    (t, int(p)): int(o) for t_p, o in ends.items() for t, _, p in [t_p.rpartition("/")]
                }
        return log


@dataclass
class RedriveResult:
    selected: int = 0
    already: int = 0
    """Selected rejects linked by an earlier run: not sent again."""
    sent: int = 0
    recovered: int = 0
    """Links found for a run that had died before recording them."""
    by_topic_reason: dict[tuple[str, str], int] = field(default_factory=dict)
    """What is (or would be) sent, per source topic and reason."""


Produce = Callable[[str, int, bytes | None, bytes | None, list[tuple[str, bytes]]], Callable[[], tuple[int, int]]]
"""Sends one record to ``(topic, partition)``; returns what tells its ``(partition, offset)`` after ``flush``
(raising if it was not acknowledged)."""

ReadHeaders = Callable[[Mapping[tuple[str, int], int]], Iterable[tuple[str, int, int, list[tuple[str, bytes]]]]]
"""Reads the given partitions from the given offsets to their ends: ``(topic, partition, offset, headers)``."""


def redrive(
    catalog: Catalog,
    selection: Selection,
    *,
    send: bool,
    produce: Produce | None = None,
    flush: Callable[[], None] = lambda: None,
    end_offsets: Callable[[Sequence[tuple[str, int]]], dict[tuple[str, int], int]] | None = None,
    read_headers: ReadHeaders | None = None,
    clock: Callable[[], float] = time.time,
) -> RedriveResult:
    """Redrive the rejects of ``selection`` (``send=False``: only say what would be sent). See the module docstring."""
    out = RedriveResult()
    log = RedriveLog.read(catalog)
    if send and log.unfinished:
        assert read_headers is not None
        out.recovered = _recover(catalog, log, read_headers, clock)
    rejects = read_rejects(catalog, selection).to_pylist()
    out.selected = len(rejects)
    todo = []
    for r in rejects:
        position = (r["source_topic"], r["source_partition"], r["source_offset"])
        if position in log.links:
            out.already += 1
            continue
        todo.append(r)
        key = (r["source_topic"], r["reason"])
        out.by_topic_reason[key] = out.by_topic_reason.get(key, 0) + 1
    if not send or not todo:
        return out
    assert produce is not None and end_offsets is not None
    run_id = uuid.uuid4().hex
    partitions = sorted({(r["source_topic"], r["source_partition"]) for r in todo})
    ends = end_offsets(partitions)
    _append(
        catalog, [_row(run_id, "intent", clock(), detail=json.dumps({f"{t}/{p}": o for (t, p), o in ends.items()}))]
    )
    sent = []
    for r in todo:
        position = (r["source_topic"], r["source_partition"], r["source_offset"])
        headers = [(h["key"], h["value"]) for h in (r["headers"] or [])]
        headers.append((REDRIVE_HEADER, encode_position(position)))
        sent.append(
            (position, r["reason"], produce(r["source_topic"], r["source_partition"], r["key"], r["value"], headers))
        )
    flush()
    links = [_row(run_id, "link", clock(), position, delivered(), reason) for position, reason, delivered in sent]
    _append(catalog, [*links, _row(run_id, "done", clock())])
    out.sent = len(links)
    return out


def _recover(catalog: Catalog, log: RedriveLog, read_headers: ReadHeaders, clock: Callable[[], float]) -> int:
    """Record the links of what unfinished runs sent (found by their header), and close those runs."""
    rows = []
    for run_id, ends in log.unfinished.items():
        for _topic, partition, offset, headers in read_headers(ends):
            origin = next((decode_position(v) for k, v in headers if k == REDRIVE_HEADER), None)
            if origin is None or origin in log.links:
                continue
            log.links[origin] = (partition, offset)
            rows.append(_row(run_id, "link", clock(), origin, (partition, offset), None))
        rows.append(_row(run_id, "done", clock()))
    _append(catalog, rows)
    return sum(1 for r in rows if r["kind"] == "link")


def _row(
    run_id: str,
    kind: str,
    at_s: float,
    origin: Position | None = None,
    to: tuple[int, int] | None = None,
    reason: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": kind,
        "source_topic": None if origin is None else origin[0],
        "source_partition": None if origin is None else origin[1],
        "source_offset": None if origin is None else origin[2],
        "to_partition": None if to is None else to[0],
        "to_offset": None if to is None else to[1],
        "reason": reason,
        "at": datetime.fromtimestamp(at_s, UTC),
        "detail": detail,
    }


def _append(catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    if rows:
        catalog.load_table(TABLES[REDRIVES].name).append(pa.Table.from_pylist(rows, schema=arrow_schema(REDRIVES)))


def linked(catalog: Catalog) -> dict[Position, tuple[int, int]]:
    """Original position -> (new partition, new offset) of every redriven reject."""
    return RedriveLog.read(catalog).links
