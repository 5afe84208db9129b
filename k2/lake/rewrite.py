"""One ``replace`` snapshot: data files swapped for others that hold the same rows.

This is what Java's ``RewriteFiles`` commits (``BaseRewriteFiles``, operation ``replace``) and
what Iceberg's ``rewrite_data_files`` writes. A reader that follows a table (an incremental
append scan, Spark Structured Streaming, Flink's incremental source) skips a ``replace``: it
holds no row that was not there before. pyiceberg's ``overwrite`` writes a ``delete`` and then
an ``append`` instead: time travel between the two shows the rows gone, an incremental read
delivers them again, and Structured Streaming stops at the delete.

pyiceberg 0.12 has no public rewrite. Its overwrite producer, ``_OverwriteFiles``, does the
swap: each ``delete_data_file`` must be live in the parent snapshot (else
``ValidationException``) and is recorded as deleted, manifests holding it are rewritten with
the rest as existing, each ``append_data_file`` is added; and the commit requires the branch to
be still at the snapshot the transaction was opened on (``AssertRefSnapshotId``), so any commit
landing meanwhile makes it fail with ``CommitFailedException``. Only its summary is changed
here: built as an overwrite's (added and deleted files, records and sizes; totals carried from
the parent), then recorded as ``replace``, since pyiceberg's ``update_snapshot_summaries``
refuses that operation. The private names are pinned by ``tests/unit/test_lake_files.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile
from pyiceberg.table import Transaction
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.typedef import EMPTY_DICT

__all__ = ["replace_files"]


class _ReplaceFiles(_OverwriteFiles):
    """pyiceberg's overwrite producer, recording its snapshot as a ``replace``."""

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        summary = super()._summary(snapshot_properties)
        return Summary(Operation.REPLACE, **summary.additional_properties)


def replace_files(
    txn: Transaction,
    io: FileIO,
    removed: Sequence[DataFile],
    added: Sequence[DataFile],
    snapshot_properties: dict[str, str],
) -> None:
    """Stage in ``txn`` one ``replace`` snapshot that swaps ``removed`` for ``added``.

    It commits with the transaction, and only if the table is still at the snapshot ``txn``
    was opened on.

    Raises:
        ValueError: nothing to remove, or the two sets hold different numbers of rows (a
            replace neither adds nor removes a row).
        ValidationException: a file in ``removed`` is not live in the transaction's snapshot.
    """
    if not removed:
        raise ValueError("a replace needs data files to remove")
    before, after = sum(f.record_count for f in removed), sum(f.record_count for f in added)
    if before != after:
        raise ValueError(f"a replace keeps every row: {len(removed)} file(s) hold {before} rows, the new ones {after}")
    with _ReplaceFiles(Operation.OVERWRITE, txn, io, snapshot_properties=snapshot_properties) as producer:
        for data_file in removed:
            producer.delete_data_file(data_file)
        for data_file in added:
            producer.append_data_file(data_file)
