"""``k2 maintain``: compact past days, expire old snapshots and delete orphan files, keeping the sink's marks."""

from __future__ import annotations

import argparse
import json
import sys

from k2.settings import get_settings

_DESCRIPTION = """\
Maintain K2's Iceberg tables while workers keep committing:

  compact   the data files of each day before today that has at least K2_MAINTAIN_MIN_FILES
            files smaller than K2_MAINTAIN_TARGET_FILE_MB are rewritten, sorted, into files of
            that size, one `replace` snapshot per day (no row added or removed: readers that
            follow the table skip it); it carries the table's offset marks forward
  expire    snapshots older than K2_MAINTAIN_SNAPSHOT_RETENTION_S are removed, but for the newest
            K2_MAINTAIN_KEEP_SNAPSHOTS and the one holding the marks; a note says when the
            expired ones were committed: a reader following the table (Spark streaming, an
            incremental read) whose last snapshot read is among them must start again, so
            keep the retention above how far such a reader may fall behind
  orphans   files under a table's location that nothing refers to any more, older than
            K2_MAINTAIN_ORPHAN_MIN_AGE_S, are deleted

A worker that commits meanwhile makes a compaction conflict; the same rewrite is committed again
on the new snapshot when every file it read is still live, else it is planned again from fresh
metadata, so no row committed concurrently is dropped. Exit 0 when all is done, 1 when a
compaction still conflicted after its retries (run it again), 2 on bad input."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "maintain",
        help="compact small files, expire snapshots, delete orphan files (marks kept)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from k2.catalog import load_k2_catalog
    from k2.lake.maintain import MaintainPolicy, maintain_table
    from k2.lake.schemas import TABLES

    unknown = sorted(set(args.table or ()) - set(TABLES))
    if unknown:
        print(f"k2 maintain: no table {', '.join(unknown)}; K2's tables are {', '.join(TABLES)}", file=sys.stderr)
        return 2
    settings = get_settings()
    catalog = load_k2_catalog(settings)
    results = [
        maintain_table(catalog, TABLES[name], MaintainPolicy.from_settings(settings), dry_run=args.dry_run)
        for name in (args.table or TABLES)
    ]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        verb = "would" if args.dry_run else "did"
        for r in results:
            files = sum(before for _, before, _ in r.compacted)
            after = "" if args.dry_run else f" -> {sum(a for _, _, a in r.compacted)}"
            compacted = f"{len(r.compacted)} day(s), {files} file(s){after}" if r.compacted else "nothing"
            print(
                f"{r.table}: {verb} compact {compacted}; expire {r.expired} snapshot(s); "
                f"delete {r.orphans} orphan file(s) ({r.orphan_bytes / 2**20:.1f} MiB)"
            )
            for note in r.notes:
                print(f"  note: {note}")
    return 1 if any(r.notes and "conflicting" in " ".join(r.notes) for r in results) else 0
