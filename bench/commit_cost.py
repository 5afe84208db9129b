"""What one commit costs as a table's history grows, with and without K2's transaction (k2.lake.txn).

    .venv/bin/python bench/commit_cost.py [--catalog sqlite|rest] [--commits 1500] [--block 50] [--plain-block N]
        [--rows 300] [--merge] [--json FILE]

Commits ``--commits`` small appends of trades, through :class:`k2.lake.writer.IcebergWriter`
as a worker's flush does, to one freshly created ``market_data.trades`` on the embedded SQLite
catalog (a temporary folder) or on the local stack's REST catalog over S3 (``--catalog rest``;
``python3 deploy/local/stack.py up --profile rest`` first; the table is purged and created
again). The commits go in blocks of ``--block``, alternating between K2's transaction ("fixed")
and pyiceberg's own ``Table.transaction()`` ("plain", what K2 did before), in ABBA order so that
drift on a shared machine falls on both alike; both variants commit to the same table, so at any
point they carry the same history. ``--plain-block`` makes pyiceberg's blocks shorter (its
commits are the slow ones). ``--merge`` sets ``commit.manifest-merge.enabled`` on the table
(pyiceberg's merge-append), to see whether the manifest list is what still grows.

Prints, per block, the median commit time and the median per step
(k2_iceberg_commit_step_seconds), and the table's snapshots, manifests and metadata
file size; then the same at the 10th, 100th, 500th, 1000th and 1500th commit. Figures depend
on the machine: they are for comparing the variants, not promises.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table, Transaction

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lake_bench import TOPIC, trades
from bench.scaleout import rest_catalog_properties
from k2.lake import files
from k2.lake.arrow import events_to_arrow
from k2.lake.laps import STEPS
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_table
from k2.lake.txn import transaction
from k2.lake.writer import IcebergWriter

CHECKPOINTS = (10, 100, 500, 1000, 1500)
PARTITIONS = 6


def plain_transaction(table: Table) -> Transaction:
    """pyiceberg's own transaction: what ``k2.lake.files.append`` used before k2.lake.txn."""
    return table.transaction()


VARIANTS: dict[str, Callable[[Table], Transaction]] = {"fixed": transaction, "plain": plain_transaction}


@contextmanager
def catalog_for(kind: str) -> Iterator[Catalog]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            warehouse = Path(tmp) / "warehouse"
            warehouse.mkdir()
            yield SqlCatalog("bench", uri=f"sqlite:///{tmp}/catalog.db", warehouse=warehouse.as_uri())
        return
    catalog = load_catalog("bench", **rest_catalog_properties())
    name = TABLES[TRADES].name
    if catalog.table_exists(name):
        catalog.purge_table(name)
    yield catalog


def shape(table: Table) -> dict[str, int]:
    """Snapshots, manifests of the current snapshot, and the metadata file's bytes."""
    snapshot = table.current_snapshot()
    return {
        "snapshots": len(table.metadata.snapshots),
        "manifests": 0 if snapshot is None else len(snapshot.manifests(table.io)),
        "metadata_bytes": len(table.io.new_input(table.metadata_location)),
    }


def run(catalog: Catalog, commits: int, blocks: dict[str, int], rows: int, merge: bool) -> list[dict[str, Any]]:
    table, _ = ensure_table(catalog, TABLES[TRADES])
    if merge:
        with table.transaction() as txn:
            txn.set_properties({"commit.manifest-merge.enabled": "true"})
    writer = IcebergWriter(catalog, {TRADES: TOPIC}, "bench:commit-cost", sleep=lambda _: None)
    out: list[dict[str, Any]] = []
    n = 0
    pair = 0
    while n < commits:
        order = ("fixed", "plain") if pair % 2 == 0 else ("plain", "fixed")
        for variant in order:
            files.transaction = VARIANTS[variant]  # type: ignore[attr-defined]  # the path under test, per block
            for _ in range(min(blocks[variant], commits - n)):
                events = trades(rows, first_offset=n * rows, partitions=PARTITIONS)
                marks: dict[tuple[str, int], int] = {}
                for event in events:
                    marks[(TOPIC, event.partition)] = max(event.offset, marks.get((TOPIC, event.partition), -1))
                batch = events_to_arrow(TRADES, events)
                start = time.perf_counter()
                result = writer.commit(TRADES, batch, marks, f"cost-{n}")
                out.append(
                    {
                        "n": n + 1,
                        "pair": pair,
                        "variant": variant,
                        "seconds": time.perf_counter() - start,
                        "steps": result.steps,
                        "snapshots": result.snapshots,
                    }
                )
                n += 1
            if out and out[-1]["pair"] == pair:
                report_block(out, pair, variant, shape(writer.table(TRADES)))
        pair += 1
    files.transaction = transaction  # type: ignore[attr-defined]
    return out


_shapes: dict[int, dict[str, int]] = {}


def report_block(out: list[dict[str, Any]], pair: int, variant: str, table_shape: dict[str, int]) -> None:
    mine = [r for r in out if r["pair"] == pair and r["variant"] == variant]
    if not mine:
        return
    _shapes[pair] = table_shape
    steps = "  ".join(f"{s} {statistics.median(r['steps'].get(s, 0.0) for r in mine) * 1000:6.1f}" for s in STEPS)
    print(
        f"commits {mine[0]['n']:>5}-{mine[-1]['n']:<5} {variant:5}"
        f"  median {statistics.median(r['seconds'] for r in mine):.3f} s"
        f"  [ms: {steps}]  snapshots {table_shape['snapshots']}  manifests {table_shape['manifests']}"
        f"  metadata {table_shape['metadata_bytes'] / 1024:.0f} KiB",
        flush=True,
    )


def checkpoints(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each checkpoint commit: the median of each variant's block in the pair that holds it."""
    rows = []
    for at in CHECKPOINTS:
        if at > len(out):
            break
        pair = out[at - 1]["pair"]
        row: dict[str, Any] = {"commit": at, **_shapes.get(pair, {})}
        for variant in VARIANTS:
            times = [r["seconds"] for r in out if r["pair"] == pair and r["variant"] == variant]
            row[variant] = statistics.median(times) if times else None
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", choices=("sqlite", "rest"), default="sqlite")
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--block", type=int, default=50, help="commits per block of K2's transaction")
    parser.add_argument(
        "--plain-block", type=int, help="commits per block of pyiceberg's (default --block; fewer: a shorter run)"
    )
    parser.add_argument("--rows", type=int, default=300, help="trades per commit")
    parser.add_argument("--merge", action="store_true", help="set commit.manifest-merge.enabled on the table")
    parser.add_argument("--json", type=Path, help="write every commit's figures here")
    args = parser.parse_args()
    blocks = {"fixed": args.block, "plain": args.block if args.plain_block is None else args.plain_block}
    if args.commits < 1 or min(blocks.values()) < 1 or args.rows < PARTITIONS:
        parser.error(f"--commits, --block and --plain-block must be positive, --rows at least {PARTITIONS}")
    print(
        f"commit cost: {args.commits} commits of {args.rows} trades, {args.catalog} catalog, blocks of {blocks}"
        f"{', manifest merge on' if args.merge else ''} (pid {os.getpid()})",
        flush=True,
    )
    with catalog_for(args.catalog) as catalog:
        out = run(catalog, args.commits, blocks, args.rows, args.merge)
    print("\nmedian commit time of each variant's block holding the commit; the table after that pair of blocks")
    print("commit   fixed s   plain s   snapshots  manifests  metadata KiB")
    for row in checkpoints(out):
        fixed, plain = row["fixed"], row["plain"]
        print(
            f"{row['commit']:>6}  {fixed:8.3f}  {plain:8.3f}  {row.get('snapshots', 0):>9}  "
            f"{row.get('manifests', 0):>9}  {row.get('metadata_bytes', 0) / 1024:>12.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "commits": out}))


if __name__ == "__main__":
    main()
