"""The audit's answer: a verdict per source partition, the companies problems, and how to print them. Pure.

Rendering lives with the report so a test, the CLI and a notebook print the same thing:
:meth:`AuditReport.render` is the terminal view (an aligned table, then every problem as
offset ranges, then one summary line), :meth:`AuditReport.to_dict` the JSON one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k2.audit.companies import CompanyProblem
from k2.audit.ranges import Ranges
from k2.audit.verdict import PartitionVerdict
from k2.lake.records import TopicPartition
from k2.lake.schemas import REJECTS
from k2.observe.group import open_transaction_line

__all__ = ["JSON_RANGE_LIMIT", "TEXT_RANGE_LIMIT", "AuditReport"]

TEXT_RANGE_LIMIT = 20
"""Ranges printed per problem line; the rest are counted (``--json`` lists more)."""
JSON_RANGE_LIMIT = 10_000
"""Ranges listed per problem in JSON; ``ranges_total`` says how many there are."""


def _ranges_json(ranges: Ranges) -> dict[str, Any]:
    return {
        "count": ranges.count,
        "ranges": [list(p) for p in ranges.pairs(JSON_RANGE_LIMIT)],
        "ranges_total": len(ranges),
    }


def _n(value: int) -> str:
    return f"{value:,}"


@dataclass(frozen=True)
class AuditReport:
    """Whether K2's law holds, partition by partition."""

    partitions: tuple[PartitionVerdict, ...]
    companies: tuple[CompanyProblem, ...] = ()
    notes: tuple[str, ...] = ()
    """Facts worth knowing that are no violation by themselves (an absent table, rows of other topics)."""
    snapshots: Mapping[str, int | None] = field(default_factory=dict)
    """The snapshot audited per table (None: the table has none, or does not exist)."""
    settled_s: float = 0.0
    """Seconds waited before the re-read that confirmed the missing offsets (0: a single read)."""
    to_end: bool = False
    """Whether every partition was judged up to its end (the last stable offset), not its mark."""
    waiting_since: Mapping[TopicPartition, int] = field(default_factory=dict)
    """Per partition with records above its mark, the Kafka timestamp (ms) of the oldest of them."""

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.partitions) and not self.companies

    @property
    def missing(self) -> int:
        return sum(v.missing.count for v in self.partitions)

    @property
    def doubled(self) -> int:
        return sum(v.doubled.count for v in self.partitions)

    @property
    def checked(self) -> int:
        return sum(v.checked for v in self.partitions)

    @property
    def lag(self) -> int:
        return sum(v.lag for v in self.partitions)

    @property
    def verified(self) -> bool:
        """Whether every partition's missing offsets were checked against Kafka."""
        return all(v.verified or not v.missing for v in self.partitions)

    def verdict(self, topic: str, partition: int) -> PartitionVerdict:
        """The verdict of one partition (KeyError if the audit did not judge it)."""
        for v in self.partitions:
            if (v.topic, v.partition) == (topic, partition):
                return v
        raise KeyError((topic, partition))

    def summary(self) -> str:
        """One line: the verdict and the figures behind it."""
        scope = (
            f"{len({v.topic for v in self.partitions})} topic(s), {len(self.partitions)} partition(s), "
            f"{_n(self.checked)} offset(s) checked from log start to {'end' if self.to_end else 'mark'}"
        )
        lag = f"; {_n(self.lag)} above the marks not judged (lake lag)" if self.lag else ""
        settled = f"; still missing after {self.settled_s:g}s" if self.settled_s and self.missing else ""
        if self.ok:
            return f"law holds: {scope}, 0 missing, 0 doubled{lag}"
        broken = [f"{_n(self.missing)} missing{'' if self.verified else ' (not verified against Kafka)'}"]
        broken.append(f"{_n(self.doubled)} doubled")
        beyond = sum(r.count for v in self.partitions for r in v.beyond_mark.values())
        gaps = sum(v.gaps_doubled.count for v in self.partitions)
        other = [
            (sum(v.not_committed.count for v in self.partitions), "row(s) of records Kafka does not hold committed"),
            (sum(v.mark_in_open_transaction for v in self.partitions), "mark(s) in an open transaction"),
            (beyond, "offset(s) beyond their table's mark"),
            (gaps, "gap row(s) doubled"),
            (sum(v.lost_to_retention.count for v in self.partitions), "offset(s) deleted by retention before landing"),
            (sum(v.mark_beyond_end for v in self.partitions), "mark(s) beyond Kafka's log end"),
            (sum(not v.in_kafka for v in self.partitions), "partition(s) unknown to Kafka"),
            (len(self.companies), "companies problem(s)"),
        ]
        broken += [f"{_n(count)} {what}" for count, what in other if count]
        return f"LAW BROKEN: {', '.join(broken)}{settled}; {scope}{lag}"

    def problem_lines(self) -> list[str]:
        """Every violation, one line each, offsets as ranges (``market.trades.raw/3: 23304-23316``)."""
        lines: list[str] = []
        for v in self.partitions:
            where = f"{v.topic}/{v.partition}"
            if not v.in_kafka:
                lines.append(
                    f"unknown partition  {where}: the lake has rows or marks for it, Kafka has no such partition"
                )
            if v.mark_beyond_end:
                lines.append(
                    f"mark beyond end    {where}: the lake's mark is {v.mark}, Kafka's log ends at {v.log_end} "
                    "(another cluster, or a re-created topic?)"
                )
            if v.mark_in_open_transaction:
                lines.append(
                    f"open transaction   {where}: the lake's mark is {v.mark}, but offsets from {v.log_end} to "
                    f"{v.high - 1} are a transaction still open: records that may yet be aborted were landed"
                )
            if v.missing:
                lines.append(f"missing            {where}: {v.missing.format(TEXT_RANGE_LIMIT)}")
            if v.not_committed:
                lines.append(
                    f"not committed      {where}: {v.not_committed.format(TEXT_RANGE_LIMIT)} (rows at offsets where "
                    "read_committed Kafka holds no record, as of aborted transactions or control markers)"
                )
            if v.lost_to_retention:
                lost = v.lost_to_retention.format(TEXT_RANGE_LIMIT)
                lines.append(
                    f"lost to retention  {where}: {lost} (after the lake's mark {v.mark}, before Kafka's log "
                    f"start {v.log_start}: deleted before they landed)"
                )
            if v.doubled:
                tables = ", ".join(f"{t} {_n(n)} row(s)" for t, n in sorted(v.doubled_rows.items()))
                lines.append(f"doubled            {where}: {v.doubled.format(TEXT_RANGE_LIMIT)} (in {tables})")
            for table, ranges in sorted(v.beyond_mark.items()):
                mark = v.table_marks.get(table)
                lines.append(
                    f"beyond mark        {where} in {table} (its mark: {'none' if mark is None else mark}): "
                    f"{ranges.format(TEXT_RANGE_LIMIT)}"
                )
            if v.gaps_doubled:
                lines.append(f"gap rows doubled   {where}: {v.gaps_doubled.format(TEXT_RANGE_LIMIT)}")
        lines += [f"companies          {p.describe()}" for p in self.companies]
        return lines

    def table(self) -> list[str]:
        """The per-partition table, columns aligned to their widest cell."""
        header = ("topic", "partition", "log start", "mark", "log end", "rows", "rejects", "missing", "doubled")
        body = [
            (
                v.topic,
                str(v.partition),
                str(v.log_start),
                "-" if v.mark is None else str(v.mark),
                str(v.log_end),
                str(sum(n for t, n in v.rows.items() if t != REJECTS)),
                str(v.rows.get(REJECTS, 0)),
                str(v.missing.count),
                str(v.doubled.count),
            )
            for v in self.partitions
        ]
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
        return [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in (header, *body)
        ]

    def transaction_notes(self) -> list[str]:
        """One line per partition with a transaction still open: above the end, neither judged nor lag."""
        return [open_transaction_line(f"{v.topic}/{v.partition}", v.log_end, v.high) for v in self.partitions if v.open]

    def render(self) -> str:
        """The terminal view: table, problems, notes, summary."""
        lines = self.table()
        problems = self.problem_lines()
        if problems:
            lines += ["", *problems]
        notes = [*self.transaction_notes(), *self.notes]
        if notes:
            lines += ["", *(f"note  {n}" for n in notes)]
        return "\n".join([*lines, "", self.summary()])

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (ranges as ``[start, end]`` pairs, at most :data:`JSON_RANGE_LIMIT` each)."""
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "settled_s": self.settled_s,
            "to_end": self.to_end,
            "snapshots": dict(self.snapshots),
            "partitions": [
                {
                    "topic": v.topic,
                    "partition": v.partition,
                    "ok": v.ok,
                    "log_start": v.log_start,
                    "log_end": v.log_end,
                    "log_high": v.high,
                    "mark": v.mark,
                    "checked_to": v.checked_to,
                    "checked": v.checked,
                    "lag": v.lag,
                    "waiting": v.waiting,
                    "rows": dict(v.rows),
                    "missing": {**_ranges_json(v.missing), "verified": v.verified, "no_record": v.no_record},
                    "doubled": {**_ranges_json(v.doubled), "rows": dict(v.doubled_rows)},
                    "beyond_mark": {
                        t: {**_ranges_json(r), "mark": v.table_marks.get(t)} for t, r in v.beyond_mark.items()
                    },
                    "gaps_doubled": _ranges_json(v.gaps_doubled),
                    "lost_to_retention": _ranges_json(v.lost_to_retention),
                    "not_committed": {**_ranges_json(v.not_committed), "judged": v.committed_read},
                    "mark_in_open_transaction": v.mark_in_open_transaction,
                    "mark_beyond_end": v.mark_beyond_end,
                    "in_kafka": v.in_kafka,
                }
                for v in self.partitions
            ],
            "companies": [
                {
                    "company_id": p.company_id,
                    "kind": p.kind,
                    "row": None if p.row is None else list(p.row),
                    "latest": None if p.latest is None else list(p.latest),
                    "rows": p.rows,
                    "detail": p.describe(),
                }
                for p in self.companies
            ],
            "notes": [*self.transaction_notes(), *self.notes],
        }
