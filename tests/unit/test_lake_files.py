"""Data files that say whether they are sorted, and the pyiceberg internals that takes (pinned)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Summary, update_snapshot_summaries

from k2.lake.arrow import companies_to_arrow, events_to_arrow
from k2.lake.maintain import MaintainPolicy, maintain_table
from k2.lake.records import BufferedEvent
from k2.lake.schemas import COMPANY_VERSIONS, TABLES, TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import DAY_MS, REFERENCE_TOPIC, T0, TOPICS, TRADES_TOPIC, company, sqlite_catalog, trade_events

ALL_TOPICS = {**TOPICS, COMPANY_VERSIONS: REFERENCE_TOPIC}


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    return catalog


def sort_order_ids(table: Table) -> list[int | None]:
    """The ``sort_order_id`` each live data file of ``table`` records in its manifest."""
    return [task.file.sort_order_id for task in table.refresh().scan().plan_files()]


def test_files_the_sink_writes_in_the_tables_order_say_so(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, ALL_TOPICS, "w:1", sleep=lambda _: None)
    # Two days in one commit: two files, each a subsequence of the sorted batch.
    events = trade_events(0, range(10)) + trade_events(0, range(10, 20), ts=T0 + DAY_MS)
    writer.commit(TRADES, events_to_arrow(TRADES, events), {(TRADES_TOPIC, 0): 19}, "c1")
    trades = catalog.load_table(TABLES[TRADES].name)
    assert not trades.sort_order().is_unsorted
    assert sort_order_ids(trades) == [trades.sort_order().order_id] * 2


def test_files_out_of_order_or_of_an_unsorted_table_say_nothing(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, ALL_TOPICS, "w:1", sleep=lambda _: None)
    backwards = list(reversed(trade_events(0, range(10))))  # later exchange times first
    writer.commit(TRADES, events_to_arrow(TRADES, backwards, sort=False), {(TRADES_TOPIC, 0): 9}, "c1")
    assert sort_order_ids(catalog.load_table(TABLES[TRADES].name)) == [None]
    versions = [BufferedEvent(REFERENCE_TOPIC, 0, 0, company())]
    writer.commit(COMPANY_VERSIONS, companies_to_arrow(versions, T0), {(REFERENCE_TOPIC, 0): 0}, "c2")
    table = catalog.load_table(TABLES[COMPANY_VERSIONS].name)
    assert table.sort_order().is_unsorted and sort_order_ids(table) == [None]


def test_compacted_files_are_sorted_and_say_so_even_when_the_small_ones_were_not(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, ALL_TOPICS, "w:1", sleep=lambda _: None)
    for i in range(3):
        batch = list(reversed(trade_events(0, range(i * 10, i * 10 + 10))))
        writer.commit(TRADES, events_to_arrow(TRADES, batch, sort=False), {(TRADES_TOPIC, 0): i * 10 + 9}, f"c{i}")
    policy = MaintainPolicy(snapshot_retention_s=1e12, keep_snapshots=100, orphan_min_age_s=1e12, min_files=2)
    maintain_table(catalog, TABLES[TRADES], policy, sleep=lambda _: None)
    trades = catalog.load_table(TABLES[TRADES].name)
    assert sort_order_ids(trades) == [trades.sort_order().order_id]
    times = trades.scan(selected_fields=("exchange_timestamp",)).to_arrow()["exchange_timestamp"].to_pylist()
    assert times == sorted(times) and len(times) == 30


def test_a_batch_that_does_not_fit_the_table_is_refused_as_pyiceberg_refuses_it(catalog: SqlCatalog) -> None:
    writer = IcebergWriter(catalog, ALL_TOPICS, "w:1", sleep=lambda _: None)
    batch = events_to_arrow(TRADES, trade_events(0, range(3)))
    wrong = batch.append_column("surprise", pa.array([1, 2, 3]))
    with pytest.raises(ValueError, match="surprise"):
        writer.commit(TRADES, wrong, {(TRADES_TOPIC, 0): 2}, "c1")
    assert catalog.load_table(TABLES[TRADES].name).current_snapshot() is None


# -- pins: the pyiceberg 0.12 internals k2.lake.files and k2.lake.rewrite rely on ----------------
# When one of these fails after a pyiceberg upgrade, read the module docstrings of
# k2/lake/files.py and k2/lake/rewrite.py: the workaround may be obsolete, or need adjusting.


def test_pin_pyiceberg_still_writes_sort_order_id_null(catalog: SqlCatalog) -> None:
    """apache/iceberg-python#271: ``write_file`` ignores ``WriteTask.sort_order_id``. Fixed: use ``Table.append``."""
    trades = catalog.load_table(TABLES[TRADES].name)
    trades.append(events_to_arrow(TRADES, trade_events(0, range(3))))
    assert sort_order_ids(trades) == [None]


def test_pin_pyiceberg_still_cannot_total_a_replace_summary() -> None:
    """``update_snapshot_summaries`` refuses ``replace``: k2.lake.rewrite totals it as an overwrite."""
    with pytest.raises(ValueError, match="not implemented"):
        update_snapshot_summaries(Summary(Operation.REPLACE))


def test_pin_the_private_pyiceberg_names_k2_uses() -> None:
    from pyiceberg.io import pyarrow as pyiceberg_arrow
    from pyiceberg.table.update import snapshot

    assert list(inspect.signature(pyiceberg_arrow._dataframe_to_data_files).parameters)[:4] == [
        "table_metadata",
        "df",
        "io",
        "write_uuid",
    ]
    assert list(inspect.signature(pyiceberg_arrow._check_pyarrow_schema_compatible).parameters) == [
        "requested_schema",
        "provided_schema",
        "downcast_ns_timestamp_to_us",
        "format_version",
    ]
    overwrite = snapshot._OverwriteFiles
    assert list(inspect.signature(overwrite.__init__).parameters)[1:5] == [
        "operation",
        "transaction",
        "io",
        "commit_uuid",
    ]
    assert "snapshot_properties" in inspect.signature(overwrite.__init__).parameters
    assert list(inspect.signature(overwrite._summary).parameters) == ["self", "snapshot_properties"]
