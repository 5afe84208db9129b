"""Whether a commit costs the same after hours at a short flush interval: commit time against history, per policy.

    .venv/bin/python bench/commit_history.py [--commits 3000] [--block 100] [--rows 300]
        [--variant fast] [--variant merge] [--variant merge,keep=600] [--json FILE]
    .venv/bin/python bench/commit_history.py --catalog rest --variant merge,keep=300 \
        --variant merge,keep=300,refresh --variant merge,keep=300,refresh,forget

Each variant is its own ``market_data.trades`` on its own embedded SQLite catalog (a temporary
folder), and the variants commit in turn, one commit each per round, so that drift on a shared
machine falls on all alike. With ``--catalog rest`` (the local stack's REST catalog over its S3,
``make stack-up PROFILE=rest``; its ``market_data.trades`` is purged first) there is one table,
so the variants may differ in ``refresh`` and ``forget`` only, and take turns on it with one
writer. A commit is what a worker's flush does (:class:`k2.lake.writer.IcebergWriter`, ``--rows``
trades over 6 partitions). A variant is a comma-separated list of:

* ``fast``: pyiceberg's fast append, one new manifest per commit (K2's tables before manifest merging);
* ``merge``: ``commit.manifest-merge.enabled`` (pyiceberg's merge append: small manifests merged
  once there are ``commit.manifest-merge.min-count-to-merge``, 100 by default);
* ``keep=N``: every ``--block`` commits, the worker's maintenance expiry (:func:`k2.lake.maintain.maintain_table`)
  keeps the newest N snapshots: the steady state of a retention of N flush intervals;
* ``refresh``: the table is read from the catalog before each commit (timed as the commit's
  ``refresh`` step), as every commit did before the writer trusted the metadata its own last
  commit returned;
* ``forget``: the writer forgets the manifests it wrote before each commit, so the commit reads
  them back from the store, as every commit did before the writer remembered them
  (:mod:`k2.lake.fileio`);
* ``target=BYTES`` and ``count=N``: the table's ``commit.manifest.target-size-bytes`` and
  ``commit.manifest.min-count-to-merge``; without them a variant has what K2 gives its tables
  (:data:`k2.lake.schemas.STREAMING_PROPERTIES`; pyiceberg's defaults are 8 MiB and 100). A merge
  rewrites a whole bin of manifests up to the target size, inside the commit that triggers it.

Prints per block of ``--block`` rounds each variant's median, p99 and slowest commit, the median
per step (``k2_iceberg_commit_step_seconds``) and the slowest manifests step (where a merge shows),
with the table's snapshots, manifests, metadata size, live data files and largest manifest at the
end of the block. Figures depend on the machine: compare the variants of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from bench.commit_cost import PARTITIONS, catalog_for, shape
from bench.lake_bench import TOPIC, trades
from k2.lake.arrow import events_to_arrow
from k2.lake.laps import STEPS
from k2.lake.maintain import MaintainPolicy, maintain_table
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_table
from k2.lake.writer import IcebergWriter

_MERGE = "commit.manifest-merge.enabled"
_NUMERIC = {"target": "commit.manifest.target-size-bytes", "count": "commit.manifest.min-count-to-merge"}


@dataclass(frozen=True)
class Variant:
    name: str
    merge: bool
    keep: int | None
    properties: dict[str, str]
    refresh: bool = False
    forget: bool = False

    @property
    def table_setup(self) -> tuple[bool, int | None, tuple[tuple[str, str], ...]]:
        """What the variant's table has (its properties and expiry), apart from how the writer commits."""
        return self.merge, self.keep, tuple(sorted(self.properties.items()))

    @classmethod
    def parse(cls, text: str) -> Variant:
        merge, keep, properties, refresh, forget = False, None, {}, False, False
        for part in text.split(","):
            key, _, value = part.partition("=")
            if part == "fast":
                merge = False
            elif part == "merge":
                merge = True
            elif part == "refresh":
                refresh = True
            elif part == "forget":
                forget = True
            elif key in ("keep", *_NUMERIC) and value.isdigit() and int(value) > 0:
                if key == "keep":
                    keep = int(value)
                else:
                    properties[_NUMERIC[key]] = value
            else:
                known = "fast, merge, keep=N, target=BYTES, count=N, refresh, forget"
                raise ValueError(f"--variant {text!r}: {part!r} is none of {known}")
        return cls(text, merge, keep, properties, refresh, forget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=3000, help="commits per variant")
    parser.add_argument("--block", type=int, default=100, help="rounds per reported block (and per expiry)")
    parser.add_argument("--rows", type=int, default=300, help="trades per commit")
    parser.add_argument("--variant", action="append", help="fast | merge, and keep=N (repeatable)")
    parser.add_argument("--json", type=Path, help="write every commit's figures here")
    parser.add_argument("--catalog", choices=("sqlite", "rest"), default="sqlite", help="default sqlite")
    args = parser.parse_args()
    try:
        variants = [Variant.parse(v) for v in args.variant or ("fast", "merge", "merge,keep=600")]
    except ValueError as exc:
        parser.error(str(exc))
    if args.commits < 1 or args.block < 1 or args.rows < PARTITIONS:
        parser.error(f"--commits and --block must be positive, --rows at least {PARTITIONS}")
    shared = args.catalog == "rest"
    if shared and len({v.table_setup for v in variants}) > 1:
        parser.error("--catalog rest: the variants share the one REST table, so they differ in refresh and forget only")
    print(
        f"commit history: {args.commits} commits of {args.rows} trades per variant, "
        f"{'the REST catalog' if shared else 'SQLite catalogs'}, variants {[v.name for v in variants]} "
        f"(pid {os.getpid()})",
        flush=True,
    )
    out: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    with ExitStack() as stack:
        catalogs: dict[str, Catalog] = {}
        writers: dict[str, IcebergWriter] = {}
        for v in variants:
            if shared and catalogs:  # one table, one writer: the variants take turns
                catalogs[v.name], writers[v.name] = next(iter(catalogs.values())), next(iter(writers.values()))
                continue
            catalogs[v.name] = stack.enter_context(catalog_for(args.catalog))
            table, _ = ensure_table(catalogs[v.name], TABLES[TRADES])
            with table.transaction() as txn:
                txn.set_properties({_MERGE: "true" if v.merge else "false", **v.properties})
            writers[v.name] = IcebergWriter(catalogs[v.name], {TRADES: TOPIC}, "bench:history", sleep=lambda _: None)
        for n in range(args.commits):
            for i, v in enumerate(variants):
                first = (n * len(variants) + i) * args.rows  # offsets of their own, should variants share a table
                events = trades(args.rows, first_offset=first, partitions=PARTITIONS)
                marks: dict[tuple[str, int], int] = {}
                for event in events:
                    marks[(TOPIC, event.partition)] = max(event.offset, marks.get((TOPIC, event.partition), -1))
                batch = events_to_arrow(TRADES, events)
                if v.forget:
                    writers[v.name].remembered.clear()
                start = time.perf_counter()
                if v.refresh:
                    writers[v.name].table(TRADES, refresh=True)
                reloaded = time.perf_counter() - start
                result = writers[v.name].commit(TRADES, batch, marks, f"history-{n}-{i}")
                seconds = time.perf_counter() - start
                steps = dict(result.steps) | {"refresh": result.steps.get("refresh", 0.0) + reloaded}
                out[v.name].append({"n": n + 1, "seconds": seconds, "steps": steps})
            if (n + 1) % args.block == 0 or n + 1 == args.commits:
                maintained: set[int] = set()
                for v in variants:
                    if v.keep is not None and id(catalogs[v.name]) not in maintained:
                        maintained.add(id(catalogs[v.name]))
                        policy = MaintainPolicy(snapshot_retention_s=0, keep_snapshots=v.keep, min_files=2**31,
                                                orphan_min_age_s=1e12)  # fmt: skip
                        maintain_table(catalogs[v.name], TABLES[TRADES], policy)
                    now = manifest_shape(catalogs[v.name].load_table(TABLES[TRADES].name))
                    report_block(v.name, out[v.name][-args.block :], now)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "commits": out}))


def manifest_shape(table: Table) -> dict[str, int]:
    """:func:`bench.commit_cost.shape`, with the live data files and the largest manifest's bytes."""
    snapshot = table.current_snapshot()
    manifests = [] if snapshot is None else snapshot.manifests(table.io)
    files = sum((m.added_files_count or 0) + (m.existing_files_count or 0) for m in manifests)
    return shape(table) | {"files": files, "largest_manifest": max((m.manifest_length for m in manifests), default=0)}


def report_block(name: str, rows: list[dict[str, Any]], table_shape: dict[str, int]) -> None:
    steps = "  ".join(f"{s} {statistics.median(r['steps'].get(s, 0.0) for r in rows) * 1000:6.1f}" for s in STEPS)
    seconds = [r["seconds"] for r in rows]
    p99 = statistics.quantiles(seconds, n=100, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    manifests_max = max(r["steps"].get("manifests", 0.0) for r in rows) * 1000
    print(
        f"commits {rows[0]['n']:>5}-{rows[-1]['n']:<5} {name:16} median {statistics.median(seconds):.3f} s"
        f"  p99 {p99:.3f} s  max {max(seconds):.3f} s"
        f"  [ms: {steps}; manifests max {manifests_max:.0f}]"
        f"  snapshots {table_shape['snapshots']}  manifests {table_shape['manifests']}"
        f"  metadata {table_shape['metadata_bytes'] / 1024:.0f} KiB  data files {table_shape['files']}"
        f"  largest manifest {table_shape['largest_manifest'] / 1024:.0f} KiB",
        flush=True,
    )


if __name__ == "__main__":
    main()
