"""How fast ``k2 audit`` judges a big lake: the lineage read and the pure core, on SQLite + local Parquet.

    .venv/bin/python bench/audit_bench.py [--rows 20000000] [--partitions 6] [--commits 20] [--shuffle]
                                          [--holes 1000] [--dups 1000] [--keep DIR] [--repeat 3]

Writes ``--rows`` events (60% trades, 40% quotes, every 200th offset to the rejects)
into a SqlCatalog in a temporary folder, ``--commits`` K2-style commits per topic (rows
and cumulative marks in one snapshot each; the trades' and quotes' own columns are
constants, the audit never reads them), then times:

* ``read_lake``: the pyiceberg scans of the lineage columns (and marks) of every table;
* ``judge_lake``: the pure core over those offsets (split, sort, holes, doubles);
* ``audit``: both, with an in-memory Kafka (log bounds, and the holes' records).

``--shuffle`` writes each commit's rows in random order (K2 sorts by exchange time, so
offsets are nearly in order; shuffled is the sort's worst case). ``--holes``/``--dups``
drop or repeat that many trades rows, so the core's slow path (ranges, Kafka's say) is
timed too; the verdict must then name exactly them. Numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog

from k2.admin.watermarks import FirstRecord, LogEnds
from k2.audit.judge import judge_lake, lake_topics, law_tables
from k2.audit.lake import read_lake
from k2.audit.ranges import Ranges
from k2.audit.runner import audit
from k2.lake.offsets import summary_properties
from k2.lake.schemas import QUOTES, REJECTS, TRADES
from k2.lake.tables import ensure_tables
from k2.settings import Settings

SETTINGS = Settings(trades_topic="market.trades.raw", quotes_topic="market.quotes.raw")
REJECT_EVERY = 200
T = TypeVar("T")


def timed(label: str, fn: Callable[[], T], rows: int, repeat: int) -> T:
    """Run ``fn`` ``repeat`` times; print the best and the median (the first run also pays page faults)."""
    took = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        took.append(time.perf_counter() - start)
    best, median = min(took), statistics.median(took)
    print(f"{label:<34} best {best:6.2f} s ({rows / best / 1e6:5.1f} M rows/s), median {median:6.2f} s")
    return out


def arange(start: int, n: int) -> pa.Array:
    """``start, start+1, ...`` (n values), without a Python loop."""
    return pc.add(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), start - 1)


def constant_columns(table_schema: pa.Schema, n: int, given: dict[str, pa.Array]) -> pa.Table:
    from datetime import UTC, datetime
    from decimal import Decimal

    fillers: dict[str, Any] = {
        "string": "ASX",
        "large_string": "ASX",
        "int32": 1,
        "int64": 1,
        "binary": b"",
        "large_binary": b"",
    }
    arrays = []
    for f in table_schema:
        if f.name in given:
            arrays.append(given[f.name].cast(f.type))
        elif pa.types.is_timestamp(f.type):
            arrays.append(pa.repeat(pa.scalar(datetime(2025, 6, 15, tzinfo=UTC), f.type), n))
        elif pa.types.is_decimal(f.type):
            arrays.append(pa.repeat(pa.scalar(Decimal("36.667000"), f.type), n))
        elif pa.types.is_large_list(f.type) or pa.types.is_list(f.type):  # the rejects' headers: none
            arrays.append(pa.nulls(n, f.type) if f.nullable else pa.array([[]] * n, f.type))
        else:
            arrays.append(pa.repeat(pa.scalar(fillers[str(f.type)], f.type), n))
    return pa.Table.from_arrays(arrays, schema=table_schema)


def write_topic(
    catalog: Catalog,
    table_name: str,
    topic: str,
    events: int,
    partitions: int,
    commits: int,
    shuffle: bool,
    drop: set[int],
    repeat: set[int],
    rejects_marks: dict[tuple[str, int], int],
) -> dict[tuple[str, int], int]:
    """Land ``events`` (row i: partition i % P, offset i // P) in ``commits`` commits; returns the log ends."""
    table = catalog.load_table(table_name)
    rejects = catalog.load_table(REJECTS)
    marks: dict[tuple[str, int], int] = {}
    per_commit = -(-events // commits)
    rng = random.Random(7)
    for first in range(0, events, per_commit):
        n = min(per_commit, events - first)
        i = arange(first, n)
        part = pc.cast(pc.subtract(i, pc.multiply(pc.divide(i, partitions), partitions)), pa.int32())
        off = pc.divide(i, partitions)
        batch = pa.table({"p": part, "o": off, "i": i})
        if shuffle:
            batch = batch.take(pa.array(rng.sample(range(n), n)))
        rejected = pc.equal(pc.subtract(batch["o"], pc.multiply(pc.divide(batch["o"], REJECT_EVERY), REJECT_EVERY)), 0)
        kept = batch.filter(pc.invert(rejected))
        if drop:
            kept = kept.filter(pc.invert(pc.is_in(kept["i"], value_set=pa.array(sorted(drop), pa.int64()))))
        extra = batch.filter(pc.is_in(batch["i"], value_set=pa.array(sorted(repeat), pa.int64()))) if repeat else None
        if extra is not None and extra.num_rows:
            kept = pa.concat_tables([kept, extra])
        out = batch.filter(rejected)
        last = batch.group_by("p").aggregate([("o", "max")])
        for p, o in zip(last["p"].to_pylist(), last["o_max"].to_pylist(), strict=True):
            marks[(topic, p)] = o
        rows = constant_columns(
            table.schema().as_arrow(), kept.num_rows, {"kafka_partition": kept["p"], "kafka_offset": kept["o"]}
        )
        table.append(rows, snapshot_properties=summary_properties(marks, uuid.uuid4().hex, "bench"))
        rejects_marks.update(marks)
        reject_rows = constant_columns(
            rejects.schema().as_arrow(),
            out.num_rows,
            {
                "source_topic": pa.repeat(pa.scalar(topic), out.num_rows),
                "source_partition": out["p"],
                "source_offset": out["o"],
            },
        )
        rejects.append(reject_rows, snapshot_properties=summary_properties(rejects_marks, uuid.uuid4().hex, "bench"))
    return {tp: o + 1 for tp, o in marks.items()}


class MemoryLog:
    """Kafka as the bench wrote it: a record at every offset below the end."""

    def __init__(self, ends: dict[tuple[str, int], int]) -> None:
        self.ends = ends

    def bounds(self, topics: Iterable[str]) -> dict[tuple[str, int], LogEnds]:
        wanted = set(topics)
        return {tp: LogEnds(0, end, end) for tp, end in self.ends.items() if tp[0] in wanted}

    def offsets_in(self, topic: str, partition: int, ranges: Ranges, *, committed: bool = True) -> pa.Array:
        parts = [arange(a, b - a + 1) for a, b in ranges]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.int64())

    def first_records(
        self, starts: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int]
    ) -> dict[tuple[str, int], FirstRecord | None]:
        return {tp: FirstRecord(start, None) if start < ends.get(tp, 0) else None for tp, start in starts.items()}

    def compacted(self, topics: Iterable[str]) -> set[str]:
        return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--commits", type=int, default=20, help="commits per topic (one file per commit and table)")
    parser.add_argument("--shuffle", action="store_true", help="rows of each commit in random order")
    parser.add_argument("--holes", type=int, default=0, help="trades rows to leave out")
    parser.add_argument("--dups", type=int, default=0, help="trades rows to land twice")
    parser.add_argument("--keep", type=Path, help="build the lake in DIR and keep it (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each step (default 3)")
    args = parser.parse_args()

    trades_events = args.rows * 6 // 10
    quotes_events = args.rows - trades_events
    rng = random.Random(1)
    wanted = args.holes + args.dups
    sample = rng.sample(range(trades_events), min(trades_events, 2 * wanted))
    candidates = [i for i in sample if (i // args.partitions) % REJECT_EVERY][:wanted]  # not a reject's offset
    drop, repeat = set(candidates[: args.holes]), set(candidates[args.holes :])

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
        catalog = SqlCatalog("bench", uri=f"sqlite:///{root}/catalog.db", warehouse=(root / "warehouse").as_uri())
        ensure_tables(catalog)
        start = time.perf_counter()
        rejects_marks: dict[tuple[str, int], int] = {}
        ends = write_topic(
            catalog, TRADES, SETTINGS.trades_topic, trades_events, args.partitions, args.commits, args.shuffle,
            drop, repeat, rejects_marks,
        )  # fmt: skip
        ends |= write_topic(
            catalog, QUOTES, SETTINGS.quotes_topic, quotes_events, args.partitions, args.commits, args.shuffle,
            set(), set(), rejects_marks,
        )  # fmt: skip
        files = sum(len(catalog.load_table(t).inspect.files()) for t in (TRADES, QUOTES, REJECTS))
        print(
            f"wrote {args.rows:,} events ({files} data files, {args.partitions} partitions per topic"
            f"{', shuffled' if args.shuffle else ''}) in {time.perf_counter() - start:.1f} s"
        )
        log = MemoryLog(ends)
        n = args.repeat
        lake = timed(
            "read_lake (lineage scan + marks)", lambda: read_lake(catalog, lake_topics(SETTINGS)), args.rows, n
        )
        bounds = log.bounds(SETTINGS.source_topics)
        report = timed("judge_lake (pure core)", lambda: judge_lake(lake, bounds, law_tables(SETTINGS)), args.rows, n)
        report = timed("audit (read + judge + verify)", lambda: audit(SETTINGS, catalog, log=log), args.rows, n)
        print(report.summary())
        assert report.missing == len(drop), (report.missing, len(drop))
        assert report.doubled == len(repeat), (report.doubled, len(repeat))
        assert report.ok == (not drop and not repeat)


if __name__ == "__main__":
    main()
