"""The value audit's answer: mismatches as offset ranges with both values, and how to print them. Pure.

A mismatch is kept per (table, topic, partition, column) as runs of consecutive offsets,
each with the first few rows' lake and source values. Bucket after bucket arrive in offset
order, so a run that reaches a bucket's end is continued by the next bucket's first run.
At most :data:`MAX_RUNS` runs are kept per column and partition (the rest are counted), so
the report stays small whatever the lake's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from k2.audit.ranges import runs, unique_sorted
from k2.audit.values_compare import ABSENT, Diff
from k2.audit.values_lake import Unsourced

__all__ = ["EXAMPLES_PER_RUN", "MAX_RUNS", "ColumnMismatch", "Example", "Run", "ValuesReport", "show"]

EXAMPLES_PER_RUN = 3
MAX_RUNS = 1000
"""Runs kept per (table, partition, column); ``--json`` lists them all, the text the first :data:`TEXT_RUNS`."""
TEXT_RUNS = 5
_TEXT_MAX = 80
_BYTES_SHOWN = 24


def show(value: Any) -> str:
    """A value as a person should read it: decimals at full scale, instants in UTC, bytes as length and hex."""
    if value is None:
        return "null"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return f"{value.isoformat()} (no time zone)"
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        hexed = value[:_BYTES_SHOWN].hex()
        return f"{len(value)} bytes {hexed}{'...' if len(value) > _BYTES_SHOWN else ''}"
    if isinstance(value, list):
        return "[" + ", ".join(_header(h) for h in value) + "]"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _TEXT_MAX else f"{text[:_TEXT_MAX]}...({len(text)} chars)"


def _header(item: Any) -> str:
    if isinstance(item, dict):
        return f"{item.get('key')}={show(item.get('value'))}"
    if isinstance(item, tuple) and len(item) == 2:
        return f"{item[0]}={show(item[1])}"
    return show(item)


@dataclass(frozen=True)
class Example:
    """One row of a run: its offset and both values."""

    offset: int
    lake: str
    source: str


@dataclass
class Run:
    """Consecutive offsets where a column differs, and the first few of them."""

    first: int
    last: int
    examples: list[Example] = field(default_factory=list)


@dataclass
class ColumnMismatch:
    """Where one column of one table differs from the source, in one partition."""

    table: str
    topic: str
    partition: int
    column: str
    rows: int = 0
    runs: list[Run] = field(default_factory=list)
    runs_total: int = 0

    def add(self, diff: Diff) -> None:
        """The rows of ``diff`` (offsets ascending, after every run already added)."""
        offsets = diff.offsets.to_numpy(zero_copy_only=False)
        self.rows += len(offsets)
        ranges = runs(unique_sorted(pa.array(offsets, pa.int64())))
        for first, last in ranges.pairs():
            if self.runs and self.runs[-1].last + 1 == first:
                run = self.runs[-1]
                run.last = last
            elif len(self.runs) < MAX_RUNS:
                run = Run(first, last)
                self.runs.append(run)
                self.runs_total += 1
            else:
                self.runs_total += 1
                continue
            if len(run.examples) < EXAMPLES_PER_RUN:
                at = int(np.searchsorted(offsets, first))
                n = EXAMPLES_PER_RUN - len(run.examples)
                run.examples += _examples(diff, at, min(at + n, int(np.searchsorted(offsets, last, "right"))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "topic": self.topic,
            "partition": self.partition,
            "column": self.column,
            "rows": self.rows,
            "runs_total": self.runs_total,
            "ranges": [
                {
                    "first": r.first,
                    "last": r.last,
                    "examples": [{"offset": e.offset, "lake": e.lake, "source": e.source} for e in r.examples],
                }
                for r in self.runs
            ],
        }

    def describe(self, limit: int = TEXT_RUNS) -> str:
        where = f"{self.table}  {self.topic}/{self.partition}  {self.column}"
        shown = []
        for r in self.runs[:limit]:
            span = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
            examples = "; ".join(f"@{e.offset} lake {e.lake} != source {e.source}" for e in r.examples)
            shown.append(f"{span}: {examples}")
        more = f"; ... {self.runs_total - limit} more range(s)" if self.runs_total > limit else ""
        return f"{where}: {self.rows:,} row(s) in {self.runs_total:,} range(s): " + " | ".join(shown) + more


def _examples(diff: Diff, start: int, stop: int) -> list[Example]:
    offsets = diff.offsets.slice(start, stop - start).to_pylist()
    source = diff.source.slice(start, stop - start).to_pylist()
    lake = (
        [ABSENT] * len(offsets)
        if diff.lake is None
        else [show(v) for v in diff.lake.slice(start, stop - start).to_pylist()]
    )
    return [Example(o, lk, show(s)) for o, lk, s in zip(offsets, lake, source, strict=True)]


@dataclass
class ValuesReport:
    """Whether every audited row equals its source record, and what was audited."""

    mismatches: dict[tuple[str, str, int, str], ColumnMismatch] = field(default_factory=dict)
    compared: dict[str, int] = field(default_factory=dict)
    """Rows compared per table."""
    unsourced: dict[tuple[str, str, int, str], Unsourced] = field(default_factory=dict)
    """(table, topic, partition, why) -> rows not compared: their source is not in Kafka."""
    not_compared: set[tuple[str, int, str, str]] = field(default_factory=set)
    """(topic, schema id, field, why): fields of writer schemas no column is compared with."""
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    """topic -> (blocks checked, blocks in the log); only with a sample."""
    snapshots: dict[str, int | None] = field(default_factory=dict)
    sample: float | None = None
    seed: int = 0
    block: int = 0
    records_read: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    """CPU seconds of this process (all its threads) while auditing values."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def rows_compared(self) -> int:
        return sum(self.compared.values())

    @property
    def rows_differing(self) -> int:
        """Rows with at least one differing column are counted once per column."""
        return sum(m.rows for m in self.mismatches.values())

    def add(self, table: str, topic: str, partition: int, diff: Diff) -> None:
        key = (table, topic, partition, diff.column)
        if key not in self.mismatches:
            self.mismatches[key] = ColumnMismatch(table, topic, partition, diff.column)
        self.mismatches[key].add(diff)

    def not_compared_rows(self, table: str, topic: str, partition: int, why: str, offsets: np.ndarray) -> None:
        """Rows of ``table`` at ``offsets`` whose source Kafka does not hold, and why."""
        if len(offsets):
            self.unsourced.setdefault((table, topic, partition, why), Unsourced()).add(offsets)

    def summary(self) -> str:
        rate = f"{self.records_read / self.elapsed_s:,.0f}/s" if self.elapsed_s > 0 else "-"
        scope = (
            f"{self.rows_compared:,} row(s) compared in {len(self.compared)} table(s), "
            f"{self.records_read:,} source record(s) read ({rate})"
        )
        if self.sample is not None:
            checked = sum(c for c, _ in self.blocks.values())
            total = sum(t for _, t in self.blocks.values())
            scope += (
                f"; sample {self.sample:g} (seed {self.seed}): {checked:,} of {total:,} blocks of "
                f"{self.block:,} offsets"
            )
        unsourced = sum(u.rows for u in self.unsourced.values())
        if unsourced:
            scope += f"; {unsourced:,} row(s) not compared: no source record in Kafka"
        if self.ok:
            return f"values equal: {scope}"
        columns = len({(t, c) for t, _, _, c in self.mismatches})
        return f"VALUES DIFFER: {self.rows_differing:,} value(s) in {columns} column(s); {scope}"

    def problem_lines(self) -> list[str]:
        return [f"differs  {m.describe()}" for _, m in sorted(self.mismatches.items())]

    def info_lines(self) -> list[str]:
        lines = []
        for (table, topic, partition, why), u in sorted(self.unsourced.items()):
            lines.append(
                f"not compared  {table}  {topic}/{partition}: {u.rows:,} row(s), offsets {u.low}-{u.high}: {why}"
            )
        for topic, schema_id, name, why in sorted(self.not_compared):
            lines.append(f"not compared  {topic} schema id {schema_id} field {name}: {why}")
        lines += [f"note  {n}" for n in self.notes]
        return lines

    def render(self) -> str:
        compared = ", ".join(f"{t} {n:,}" for t, n in sorted(self.compared.items()))
        lines = [f"values compared  {compared or 'nothing'}"]
        problems, info = self.problem_lines(), self.info_lines()
        if problems:
            lines += ["", *problems]
        if info:
            lines += ["", *info]
        return "\n".join([*lines, "", self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "compared": dict(self.compared),
            "records_read": self.records_read,
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "snapshots": dict(self.snapshots),
            "sample": None
            if self.sample is None
            else {"fraction": self.sample, "seed": self.seed, "block": self.block, "blocks": self.blocks},
            "mismatches": [m.to_dict() for _, m in sorted(self.mismatches.items())],
            "not_compared_rows": [
                {"table": t, "topic": tp, "partition": p, "why": why, "rows": u.rows, "low": u.low, "high": u.high}
                for (t, tp, p, why), u in sorted(self.unsourced.items())
            ],
            "not_compared_fields": [
                {"topic": tp, "schema_id": sid, "field": name, "why": why}
                for tp, sid, name, why in sorted(self.not_compared)
            ],
            "notes": list(self.notes),
        }
