"""Why a commit grew slower with the table's history, the transaction that fixes it, and its pins.

pyiceberg 0.12's ``Transaction.table_metadata`` deep-copies the table's metadata, every snapshot
it lists, each time it is read, and an append reads it a dozen times or more: a commit's cost
grew with the number of snapshots. Counted here, not timed: the snapshots deep-copied per
commit. :mod:`k2.lake.txn` must bring that to the catalog's own copy (at most one per snapshot,
for the SQLite catalog's ``update_table_metadata``) and commit exactly what pyiceberg commits.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.table import Table, Transaction, update_table_metadata
from pyiceberg.table import snapshots as pyiceberg_snapshots
from pyiceberg.table import update as pyiceberg_update
from pyiceberg.table.snapshots import Snapshot

from k2.lake import files
from k2.lake.arrow import events_to_arrow
from k2.lake.rewrite import replace_files
from k2.lake.schemas import TABLES, TRADES
from k2.lake.tables import ensure_tables
from k2.lake.txn import staged_metadata, transaction

from .lake_helpers import sqlite_catalog, trade_events

Append = Callable[[Table, pa.Table], None]


@pytest.fixture
def trades(tmp_path: Path) -> Table:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    return catalog.load_table(TABLES[TRADES].name)


def rows(first: int, n: int = 2) -> pa.Table:
    return events_to_arrow(TRADES, trade_events(0, range(first, first + n)))


@pytest.fixture
def snapshot_copies(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How many ``Snapshot`` objects were deep-copied (``copy.deepcopy``, as pydantic's ``model_copy(deep=True)``)."""
    copies = {"n": 0}
    real = Snapshot.__deepcopy__

    def counted(self: Snapshot, memo: dict[int, Any] | None = None) -> Snapshot:
        copies["n"] += 1
        return real(self, memo)

    monkeypatch.setattr(Snapshot, "__deepcopy__", counted)
    yield copies


def copies_per_append(table: Table, append: Append, copies: dict[str, int], first: int) -> int:
    before = copies["n"]
    append(table, rows(first))
    return copies["n"] - before


def plain_append(table: Table, df: pa.Table) -> None:
    table.append(df)


def k2_append(table: Table, df: pa.Table) -> None:
    files.append(table, df, {"k2.test": "1"})


def txn_append(table: Table, df: pa.Table) -> None:
    with transaction(table) as txn:
        txn.append(df)


def grow(table: Table, snapshots: int) -> None:
    while len(table.metadata.snapshots) < snapshots:
        table.append(rows(1000 + len(table.metadata.snapshots)))


def test_plain_pyiceberg_copies_the_whole_history_many_times_per_commit(
    trades: Table, snapshot_copies: dict[str, int]
) -> None:
    grow(trades, 3)
    short = copies_per_append(trades, plain_append, snapshot_copies, 0)
    grow(trades, 30)
    long = copies_per_append(trades, plain_append, snapshot_copies, 10)
    # Each read of Transaction.table_metadata copies every snapshot: the cost grows with the
    # history, several whole copies per commit (the catalog's own is one of them).
    assert long - short >= 5 * (30 - 3)


@pytest.mark.parametrize("append", [k2_append, txn_append], ids=["k2.lake.files.append", "transaction().append"])
def test_a_commit_through_the_k2_transaction_copies_the_history_at_most_once(
    trades: Table, snapshot_copies: dict[str, int], append: Append
) -> None:
    grow(trades, 30)
    n = len(trades.metadata.snapshots)
    # Only the SQLite catalog's update_table_metadata copies, once (the REST catalog's server does it).
    assert copies_per_append(trades, append, snapshot_copies, 0) <= n + 1
    assert len(trades.metadata.snapshots) == n + 1


def test_the_writer_and_the_compaction_commit_through_the_k2_transaction() -> None:
    from k2.lake import maintain, writer

    assert files.transaction is transaction
    for module in (maintain, writer):  # the compaction's replace, the writer's upsert
        assert module.transaction is transaction
        assert ".transaction()" not in inspect.getsource(module) and "table.upsert(" not in inspect.getsource(module)


# -- the same commit with and without the override -------------------------------------------


class _Captured(Exception):
    """Raised instead of committing: the test keeps what the catalog was asked to commit."""


def capture_commit(monkeypatch: pytest.MonkeyPatch, table: Table) -> list[tuple[Any, Any]]:
    asked: list[tuple[Any, Any]] = []

    def commit_table(_: Table, requirements: Any, updates: Any) -> Any:
        asked.append((requirements, updates))
        raise _Captured

    monkeypatch.setattr(table.catalog, "commit_table", commit_table)
    return asked


def same_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot ids, commit uuids and file names from one sequence, snapshot times from one clock."""
    counter = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter) * 7919))
    monkeypatch.setattr(pyiceberg_snapshots, "time", SimpleNamespace(time=lambda: 1_750_000_000.0))


def asked_to_commit(
    monkeypatch: pytest.MonkeyPatch, table: Table, stage: Callable[[Transaction], None], txn: Transaction
) -> tuple[Any, Any]:
    asked = capture_commit(monkeypatch, table)
    same_randomness(monkeypatch)
    with pytest.raises(_Captured), txn:
        stage(txn)
    assert len(asked) == 1
    return asked[0]


def stage_k2_append(txn: Transaction) -> None:
    # what files.append stages, on the transaction given
    with txn.update_snapshot(snapshot_properties={"k2.test": "1"}).fast_append() as producer:
        for data_file in files.write_data_files(txn.table_metadata, txn._table.io, rows(0), producer.commit_uuid):
            producer.append_data_file(data_file)


def stage_replace(txn: Transaction) -> None:
    table = txn._table
    live = [task.file for task in table.scan().plan_files()]
    merged = files.write_data_files(txn.table_metadata, table.io, table.scan().to_arrow())
    txn.set_properties({"write.target-file-size-bytes": "1000000"})
    replace_files(txn, table.io, live, merged, {"k2.test": "1"})


@pytest.mark.parametrize("stage", [stage_k2_append, stage_replace], ids=["append", "replace"])
def test_the_catalog_is_asked_to_commit_exactly_what_pyiceberg_asks(
    trades: Table, monkeypatch: pytest.MonkeyPatch, stage: Callable[[Transaction], None]
) -> None:
    grow(trades, 5)
    plain = asked_to_commit(monkeypatch, trades, stage, trades.transaction())
    ours = asked_to_commit(monkeypatch, trades, stage, transaction(trades))
    assert ours == plain
    requirements, updates = ours
    assert {type(r).__name__ for r in requirements} >= {"AssertRefSnapshotId", "AssertTableUUID"}
    assert "AddSnapshotUpdate" in {type(u).__name__ for u in updates}


# -- pins: the pyiceberg 0.12 internals k2.lake.txn relies on ----------------------------------
# When one of these fails after a pyiceberg upgrade, read k2/lake/txn.py's docstring: the
# override may be obsolete (pyiceberg stopped copying) or need adjusting.


def test_pin_pyiceberg_still_deep_copies_the_transactions_metadata_on_every_read(trades: Table) -> None:
    assert "model_copy(deep=True)" in inspect.getsource(update_table_metadata)
    assert isinstance(inspect.getattr_static(Transaction, "table_metadata"), property)
    txn = trades.transaction()
    assert txn.table_metadata is not txn.table_metadata  # a new copy each read


def test_pin_the_private_pyiceberg_names_k2_lake_txn_uses(trades: Table) -> None:
    assert list(inspect.signature(Transaction.__init__).parameters) == ["self", "table", "autocommit"]
    txn = trades.transaction()
    assert txn._table is trades and txn._updates == ()
    assert list(inspect.signature(pyiceberg_update._apply_table_update).parameters) == [
        "update",
        "base_metadata",
        "context",
    ]
    assert callable(pyiceberg_update._TableMetadataUpdateContext().has_changes)


def test_pin_staged_metadata_is_update_table_metadata_without_the_copy(trades: Table) -> None:
    grow(trades, 3)
    txn = trades.transaction()
    txn.set_properties({"k2.test": "1"})
    with txn.update_snapshot().fast_append() as producer:
        for data_file in files.write_data_files(txn.table_metadata, trades.io, rows(0), producer.commit_uuid):
            producer.append_data_file(data_file)
    base, updates = trades.metadata, txn._updates
    ours = staged_metadata(base, updates)
    assert ours == update_table_metadata(base, updates)
    assert ours.snapshots[0] is base.snapshots[0]  # shared, not copied
    assert copy.deepcopy(ours) == ours


def test_the_k2_transaction_reads_its_metadata_once_per_staged_update(trades: Table) -> None:
    txn = transaction(trades)
    first = txn.table_metadata
    assert txn.table_metadata is first  # no new computation while nothing is staged
    txn.set_properties({"k2.test": "1"})
    staged = txn.table_metadata
    assert staged is not first and staged.properties["k2.test"] == "1"
    assert txn.table_metadata is staged
    trades.refresh()  # the table's metadata replaced: computed again
    assert txn.table_metadata.properties["k2.test"] == "1"


def test_expiring_many_snapshots_copies_the_history_at_most_once(
    trades: Table, snapshot_copies: dict[str, int]
) -> None:
    """pyiceberg's ExpireSnapshots reads the transaction's metadata twice per snapshot it expires (a
    whole copy each time): expiring 60 of 260 snapshots took 0.9 s, the worker's flush waiting on it."""
    from k2.lake.maintain import MaintainPolicy, expire_table

    grow(trades, 30)
    n = len(trades.metadata.snapshots)
    before = snapshot_copies["n"]
    result = expire_table(trades.catalog, TABLES[TRADES], MaintainPolicy(keep_snapshots=1, max_snapshots=10))
    assert result.expired == n - 10
    # Only the SQLite catalog's update_table_metadata copies, once.
    assert snapshot_copies["n"] - before <= n + 1
