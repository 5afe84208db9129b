"""One replace snapshot: files swapped, rows kept, and only on the snapshot it was planned from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from k2.lake.arrow import events_to_arrow
from k2.lake.files import write_data_files
from k2.lake.rewrite import replace_files
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_tables

from .lake_helpers import sqlite_catalog, trade_events
from .lake_history import history_problems


@pytest.fixture
def trades(tmp_path: Path) -> Table:
    catalog: SqlCatalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    table = catalog.load_table(TABLES[TRADES].name)
    for i in range(3):
        table.append(events_to_arrow(TRADES, trade_events(0, range(i * 10, i * 10 + 10))))
    return table


def test_a_replace_swaps_the_files_and_keeps_the_summary_java_expects(trades: Table) -> None:
    old = [task.file for task in trades.scan().plan_files()]
    rows = trades.scan().to_arrow()
    parent = trades.current_snapshot()
    with trades.transaction() as txn:
        new = write_data_files(txn.table_metadata, trades.io, rows)
        replace_files(txn, trades.io, old, new, {"k2.maintenance": "test"})
    snapshot = trades.current_snapshot()
    assert snapshot is not None and parent is not None and snapshot.summary is not None
    assert snapshot.parent_snapshot_id == parent.snapshot_id
    summary = snapshot.summary
    assert summary.operation.value == "replace"
    assert (summary["added-data-files"], summary["deleted-data-files"]) == ("1", "3")
    assert summary["added-records"] == summary["deleted-records"] == "30"
    assert summary["total-records"] == "30" and summary["total-data-files"] == "1"
    assert int(summary["added-files-size"]) == sum(f.file_size_in_bytes for f in new)
    assert int(summary["removed-files-size"]) == sum(f.file_size_in_bytes for f in old)
    assert summary["k2.maintenance"] == "test"
    assert [task.file.file_path for task in trades.scan().plan_files()] == [f.file_path for f in new]
    assert history_problems(trades) == []


def test_a_commit_landing_after_the_plan_makes_the_replace_fail(trades: Table, tmp_path: Path) -> None:
    """The commit requires the snapshot it planned from (AssertRefSnapshotId), even for another day's commit."""
    planned = trades.current_snapshot()
    old = [task.file for task in trades.scan().plan_files()]
    rows = trades.scan().to_arrow()
    other = sqlite_catalog(tmp_path).load_table(TABLES[TRADES].name)  # a worker, committing meanwhile
    other.append(events_to_arrow(TRADES, trade_events(1, range(5), ts=1_800_000_000_000)))
    with pytest.raises(CommitFailedException), trades.transaction() as txn:
        replace_files(txn, trades.io, old, write_data_files(txn.table_metadata, trades.io, rows), {})
    current = trades.refresh().current_snapshot()
    assert current is not None and planned is not None and current.parent_snapshot_id == planned.snapshot_id
    assert trades.scan().count() == 35


def test_a_replace_refuses_to_add_or_lose_rows_or_to_remove_what_is_not_there(trades: Table) -> None:
    files = [task.file for task in trades.scan().plan_files()]
    some = events_to_arrow(TRADES, trade_events(0, range(10)))
    with trades.transaction() as txn:
        with pytest.raises(ValueError, match="keeps every row"):
            replace_files(txn, trades.io, files, write_data_files(txn.table_metadata, trades.io, some), {})
        with pytest.raises(ValueError, match="needs data files"):
            replace_files(txn, trades.io, [], [], {})
    # A file another maintenance run already swapped out is not live any more.
    gone = files[0]
    its_rows = ArrowScan(trades.metadata, trades.io, trades.schema(), AlwaysTrue()).to_table([FileScanTask(gone)])
    with trades.transaction() as txn:
        replace_files(txn, trades.io, [gone], write_data_files(txn.table_metadata, trades.io, its_rows), {})
    with pytest.raises(ValidationException, match="Missing required files"), trades.transaction() as txn:
        replace_files(txn, trades.io, [gone], write_data_files(txn.table_metadata, trades.io, its_rows), {})
    assert trades.scan().count() == 30
    assert history_problems(trades) == []
