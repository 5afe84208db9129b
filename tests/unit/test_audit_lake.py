"""The audit over real Iceberg tables (pyiceberg's SQLite catalog), with a fake Kafka."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog

from k2.audit import audit
from k2.audit.companies import NOT_A_VERSION, STALE, CompanyProblem
from k2.audit.lake import read_lake
from k2.audit.ranges import EMPTY, Ranges
from k2.errors import LakeCorrupt, NotInitialised, ServiceUnavailable
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, SEQUENCE_GAPS, TABLES, TRADES
from k2.observe.group import Group, Member

from .audit_helpers import SETTINGS, FakeGroup, FakeLog, k2_lake, land, rows
from .lake_helpers import QUOTES_TOPIC, REFERENCE_TOPIC, TRADES_TOPIC

T0, T1 = (TRADES_TOPIC, 0), (TRADES_TOPIC, 1)
Q0 = (QUOTES_TOPIC, 0)
R0 = (REFERENCE_TOPIC, 0)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return k2_lake(tmp_path)


def land_trades(catalog: Catalog, partition: int, offsets: list[int], marks: dict[tuple[str, int], int]) -> None:
    land(catalog, TRADES, marks, kafka_partition=[partition] * len(offsets), kafka_offset=offsets)


def land_rejects(catalog: Catalog, positions: list[tuple[str, int, int]], marks: dict[tuple[str, int], int]) -> None:
    land(
        catalog,
        REJECTS,
        marks,
        source_topic=[t for t, _, _ in positions],
        source_partition=[p for _, p, _ in positions],
        source_offset=[o for _, _, o in positions],
    )


def land_reference(catalog: Catalog, versions: list[tuple[int, int]], latest: list[tuple[int, int]], mark: int) -> None:
    """``versions`` and ``latest`` as (company_id, offset) on partition 0; companies gets ``latest``."""
    for name, positions in ((COMPANY_VERSIONS, versions), (COMPANIES, latest)):
        land(
            catalog,
            name,
            {R0: mark},
            company_id=[c for c, _ in positions],
            kafka_partition=[0] * len(positions),
            kafka_offset=[o for _, o in positions],
        )


def healthy_lake(catalog: Catalog) -> FakeLog:
    """Trades 0/0..49 and 1/0..29 (two commits on 0), rejects of trades and quotes, three companies."""
    land_trades(catalog, 0, list(range(0, 20)), {T0: 19})
    land_trades(catalog, 0, [*range(20, 40), *range(41, 50)], {T0: 49})
    land_trades(catalog, 1, list(range(0, 30)), {T0: 49, T1: 29})
    land_rejects(catalog, [(TRADES_TOPIC, 0, 40), (QUOTES_TOPIC, 0, 0), (QUOTES_TOPIC, 0, 1)], {T0: 40, Q0: 1})
    land(catalog, QUOTES, {Q0: 9}, kafka_partition=[0] * 8, kafka_offset=list(range(2, 10)))
    land_reference(catalog, [(1, 0), (2, 1), (1, 2), (3, 3)], [(1, 2), (2, 1), (3, 3)], mark=3)
    return FakeLog({T0: 60, T1: 30, Q0: 10, R0: 4})


def test_a_healthy_lake_keeps_the_law(catalog: Catalog) -> None:
    report = audit(SETTINGS, catalog, log=healthy_lake(catalog))
    assert report.ok, report.render()
    trades0 = report.verdict(TRADES_TOPIC, 0)
    assert (trades0.mark, trades0.checked, trades0.lag) == (49, 50, 10)
    assert trades0.rows == {TRADES: 49, REJECTS: 1}
    assert report.verdict(QUOTES_TOPIC, 0).rows == {QUOTES: 8, REJECTS: 2}
    assert report.verdict(REFERENCE_TOPIC, 0).checked == 4
    assert report.summary().startswith("law holds: 3 topic(s), 4 partition(s), 94 offset(s) checked")
    assert set(report.snapshots) == {TRADES, QUOTES, COMPANY_VERSIONS, COMPANIES, REJECTS, SEQUENCE_GAPS}


def test_a_hole_kafka_holds_records_in_is_missing(catalog: Catalog) -> None:
    land_trades(catalog, 0, [*range(0, 10), *range(15, 30)], {T0: 29})
    log = FakeLog({T0: 30, T1: 0, Q0: 0, R0: 0})
    report = audit(SETTINGS, catalog, log=log)
    assert not report.ok
    v = report.verdict(TRADES_TOPIC, 0)
    assert v.missing == Ranges.of((10, 14)) and v.verified
    assert log.reads == [(TRADES_TOPIC, 0, [(10, 14)])]  # Kafka is asked about the hole only
    assert "missing            market.trades.raw/0: 10-14" in report.render()
    assert report.summary().startswith("LAW BROKEN: 5 missing, 0 doubled")


def test_holes_without_records_in_kafka_are_no_violation(catalog: Catalog) -> None:
    # A compacted reference topic: offsets 1 and 2 were superseded and compacted away before K2 read them.
    land_reference(catalog, [(1, 0), (2, 3)], [(1, 0), (2, 3)], mark=3)
    report = audit(SETTINGS, catalog, log=FakeLog({R0: 4, T0: 0, Q0: 0}, empty={R0: [1, 2]}))
    assert report.ok, report.render()
    v = report.verdict(REFERENCE_TOPIC, 0)
    assert (v.missing, v.no_record, v.verified) == (EMPTY, 2, True)


def test_an_offset_in_two_tables_is_doubled(catalog: Catalog) -> None:
    log = healthy_lake(catalog)
    land_rejects(catalog, [(TRADES_TOPIC, 1, 5), (TRADES_TOPIC, 1, 6)], {T0: 40, Q0: 1, T1: 6})
    report = audit(SETTINGS, catalog, log=log)
    v = report.verdict(TRADES_TOPIC, 1)
    assert v.doubled == Ranges.of((5, 6))
    assert v.doubled_rows == {TRADES: 2, REJECTS: 2}
    assert not report.ok
    assert (
        "doubled            market.trades.raw/1: 5-6 (in market_data.rejects 2 row(s), market_data.trades 2 row(s))"
        in (report.render())
    )


def test_an_offset_landed_twice_in_one_table_is_doubled(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    land_trades(catalog, 0, list(range(8, 12)), {T0: 11})  # a retry that did not drop what was committed
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 12, T1: 0, Q0: 0, R0: 0}))
    assert report.verdict(TRADES_TOPIC, 0).doubled == Ranges.of((8, 9))
    assert report.doubled == 2


def test_a_table_fed_by_another_topic_too_is_named(catalog: Catalog) -> None:
    """A table of one topic whose marks name another (K2_TRADES_TOPIC changed, or two deployments share a
    lake): its rows cannot be told apart, so the audit says why offsets may read as doubled."""
    land_trades(catalog, 0, list(range(0, 10)), {("old.trades", 0): 9})
    land_trades(catalog, 0, list(range(0, 10)), {("old.trades", 0): 9, T0: 9})
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0}))
    assert report.verdict(TRADES_TOPIC, 0).doubled == Ranges.of((0, 9))
    assert any(
        f"{TRADES} records marks of another topic too (old.trades)" in n and "one topic" in n for n in report.notes
    ), report.notes


def test_rows_beyond_their_tables_mark(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 7})  # a commit whose marks lag its rows
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0}))
    v = report.verdict(TRADES_TOPIC, 0)
    assert v.beyond_mark == {TRADES: Ranges.of((8, 9))}
    assert v.missing == EMPTY  # 8 and 9 are above the lake's mark: lag, not judged as holes
    assert not report.ok
    assert "beyond mark        market.trades.raw/0 in market_data.trades (its mark: 7): 8-9" in report.render()


def test_marks_come_from_the_newest_k2_commit(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    # Someone else's append (no k2 keys) on top: its rows are beyond the mark K2 recorded.
    trades = catalog.load_table(TRADES)
    trades.append(rows(trades, kafka_partition=[0], kafka_offset=[10]))
    lake = read_lake(catalog, {TRADES: TRADES_TOPIC})
    assert lake.tables[TRADES].marks == {T0: 9}
    assert lake.tables[TRADES].snapshot_id == catalog.load_table(TRADES).current_snapshot().snapshot_id  # type: ignore[union-attr]
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 11, T1: 0, Q0: 0, R0: 0}))
    assert report.verdict(TRADES_TOPIC, 0).beyond_mark == {TRADES: Ranges.of((10, 10))}


def test_the_reader_keeps_only_lineage(catalog: Catalog) -> None:
    healthy_lake(catalog)
    lake = read_lake(catalog, {TRADES: TRADES_TOPIC, REJECTS: None, COMPANIES: REFERENCE_TOPIC})
    assert lake.tables[TRADES].by_topic[TRADES_TOPIC].column_names == ["partition", "offset"]
    assert sorted(lake.tables[REJECTS].by_topic) == [QUOTES_TOPIC, TRADES_TOPIC]
    assert lake.tables[COMPANIES].by_topic[REFERENCE_TOPIC].column_names == ["partition", "offset", "company_id"]
    assert lake.marks() == {T0: 49, T1: 29, Q0: 1, R0: 3}


def test_a_topic_no_table_has_landed_is_lag(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 5)), {T0: 4})
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 5, T1: 0, Q0: 12, R0: 0}))
    assert report.ok, report.render()
    quotes = report.verdict(QUOTES_TOPIC, 0)
    assert (quotes.mark, quotes.checked, quotes.lag, quotes.rows) == (None, 0, 12, {QUOTES: 0, REJECTS: 0})
    assert "12 above the marks not judged (lake lag)" in report.summary()


def test_empty_tables_keep_the_law(catalog: Catalog) -> None:
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 0, T1: 0, Q0: 0, R0: 0}))
    assert report.ok and report.checked == 0


def test_an_absent_table_reads_as_empty_and_says_so(catalog: Catalog) -> None:
    catalog.drop_table(COMPANY_VERSIONS)
    land(catalog, COMPANIES, {R0: 2}, company_id=[1, 2], kafka_partition=[0, 0], kafka_offset=[1, 2])
    report = audit(SETTINGS, catalog, log=FakeLog({R0: 3, T0: 0, T1: 0, Q0: 0}))
    assert f"{COMPANY_VERSIONS} does not exist (run `k2 init`): read as empty" in report.notes
    # The reference topic's offsets have no table to be in, and the companies rows no history.
    assert report.verdict(REFERENCE_TOPIC, 0).missing == Ranges.of((0, 2))
    assert [(p.company_id, p.kind) for p in report.companies] == [(1, NOT_A_VERSION), (2, NOT_A_VERSION)]


def test_companies_must_match_their_history(catalog: Catalog) -> None:
    land_reference(catalog, [(1, 0), (2, 1), (1, 2)], [(1, 0), (2, 1)], mark=2)
    report = audit(SETTINGS, catalog, log=FakeLog({R0: 3, T0: 0, Q0: 0}))
    assert report.companies == (CompanyProblem(1, STALE, row=(0, 0), latest=(0, 2)),)
    assert not report.ok
    assert "companies          company 1: companies holds 0@0, latest version is 0@2" in report.render()


def test_a_partition_kafka_does_not_have(catalog: Catalog) -> None:
    land_trades(catalog, 7, [0, 1], {(TRADES_TOPIC, 7): 1})
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 0, T1: 0, Q0: 0, R0: 0}))
    v = report.verdict(TRADES_TOPIC, 7)
    assert not v.in_kafka and v.mark_beyond_end and not report.ok


def test_gap_rows_twice(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    land(
        catalog,
        SEQUENCE_GAPS,
        {T0: 9},
        source_topic=[TRADES_TOPIC] * 3,
        source_partition=[0] * 3,
        source_offset=[4, 4, 8],
    )
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0}))
    assert report.verdict(TRADES_TOPIC, 0).gaps_doubled == Ranges.of((4, 4))
    assert not report.ok


def test_settling_forgives_a_flush_in_flight(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    land_rejects(catalog, [(TRADES_TOPIC, 0, 12)], {T0: 12})  # the rejects committed first; 10, 11 are on their way
    log = FakeLog({T0: 13, T1: 0, Q0: 0, R0: 0})
    waits: list[float] = []

    def flush_lands(seconds: float) -> None:
        waits.append(seconds)
        land_trades(catalog, 0, [10, 11], {T0: 11})

    assert audit(SETTINGS, catalog, log=log).verdict(TRADES_TOPIC, 0).missing == Ranges.of((10, 11))
    report = audit(SETTINGS, catalog, log=log, settle_s=2.5, sleep=flush_lands)
    assert waits == [2.5]
    assert report.ok, report.render()


def test_settling_reports_what_stayed_missing(catalog: Catalog) -> None:
    land_trades(catalog, 0, [*range(0, 10), 13], {T0: 13})
    log = FakeLog({T0: 20, T1: 0, Q0: 0, R0: 0})

    def another_flush(_: float) -> None:
        land_trades(catalog, 0, [10, *range(15, 19)], {T0: 18})  # 10 lands; 11, 12 never do; 14 is newly judged

    report = audit(SETTINGS, catalog, log=log, settle_s=1, sleep=another_flush)
    v = report.verdict(TRADES_TOPIC, 0)
    assert v.missing == Ranges.of((11, 12)) and v.mark == 18
    assert report.settled_s == 1 and "still missing after 1s" in report.summary()


def test_no_settling_when_nothing_is_missing(catalog: Catalog) -> None:
    def never(_: float) -> None:
        raise AssertionError("waited for nothing")

    assert audit(SETTINGS, catalog, log=healthy_lake(catalog), settle_s=30, sleep=never).ok


def test_a_catalog_without_k2_tables_is_not_initialised(catalog: Catalog) -> None:
    for name in TABLES:
        catalog.drop_table(name)
    with pytest.raises(NotInitialised, match="run `k2 init`"):
        audit(SETTINGS, catalog, log=FakeLog({}))


def test_a_malformed_mark_is_loud(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    table.append(
        rows(table, kafka_partition=[0], kafka_offset=[0]),
        snapshot_properties={"k2.commit-id": "c", "k2.offsets.market.trades.raw.0": "zero"},
    )
    with pytest.raises(LakeCorrupt, match=r"market_data\.trades"):
        audit(SETTINGS, catalog, log=FakeLog({T0: 1}))


def test_rows_of_aborted_records_break_the_law(catalog: Catalog) -> None:
    # Kafka: 5 and 6 an aborted transaction, 7 its marker; the lake holds 5 and 6 as rows.
    land_trades(catalog, 0, [*range(0, 7), 8, 9], {T0: 9})
    log = FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0}, empty={T0: [7]}, aborted={T0: [5, 6]})
    report = audit(SETTINGS, catalog, log=log)
    v = report.verdict(TRADES_TOPIC, 0)
    assert v.not_committed == Ranges.of((5, 6)) and v.missing == EMPTY and not report.ok
    # The hole at 7 held no record: then the whole window was read, once.
    assert log.reads == [(TRADES_TOPIC, 0, [(7, 7)]), (TRADES_TOPIC, 0, [(0, 9)])]
    assert "not committed      market.trades.raw/0: 5-6 (rows at offsets where read_committed" in report.render()
    assert report.summary().startswith("LAW BROKEN: 0 missing, 0 doubled, 2 row(s) of records Kafka does not hold")


def test_a_partition_without_holes_is_not_read_whole(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    log = FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0})
    assert audit(SETTINGS, catalog, log=log).ok
    assert log.reads == []


def test_a_compacted_topic_forgives_rows_compaction_removed(catalog: Catalog) -> None:
    # Offset 1 (company 1's first version) was compacted away after it landed; 2 is a hole (a marker);
    # 4 is an aborted record a read_uncommitted worker landed.
    land_reference(catalog, [(1, 0), (1, 1), (2, 3), (3, 4)], [(1, 1), (2, 3), (3, 4)], mark=4)
    log = FakeLog({R0: 5, T0: 0, Q0: 0}, empty={R0: [1, 2]}, aborted={R0: [4]}, compacted=[REFERENCE_TOPIC])
    v = audit(SETTINGS, catalog, log=log).verdict(REFERENCE_TOPIC, 0)
    assert v.not_committed == Ranges.of((4, 4))
    assert (TRADES_TOPIC, 0, [(0, 4)]) not in log.reads and (REFERENCE_TOPIC, 0, [(0, 4)]) in log.reads


def test_to_the_end_what_never_landed_is_missing_after_settling(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 20)), {T0: 19})
    log = FakeLog({T0: 30, T1: 5, Q0: 0, R0: 0})
    assert audit(SETTINGS, catalog, log=log).ok  # lag, by default

    def a_flush_lands(_: float) -> None:
        land_trades(catalog, 0, list(range(20, 25)), {T0: 24})

    report = audit(SETTINGS, catalog, log=log, to_end=True, settle_s=3, sleep=a_flush_lands)
    assert report.verdict(TRADES_TOPIC, 0).missing == Ranges.of((25, 29))
    assert report.verdict(TRADES_TOPIC, 1).missing == Ranges.of((0, 4))
    assert report.to_end and report.lag == 0 and not report.ok
    assert "offset(s) checked from log start to end" in report.summary()
    assert report.to_dict()["to_end"] is True


def test_partitions_waiting_without_an_owner_are_named(catalog: Catalog) -> None:
    land_trades(catalog, 0, list(range(0, 20)), {T0: 19})
    log = FakeLog({T0: 30, T1: 5, Q0: 0, R0: 0}, timestamp_ms=1_000_000)
    owner = Member("faust-0.15.3-abc", "faust-0.15.3", "/10.0.0.1", frozenset({T0}))
    report = audit(SETTINGS, catalog, log=log, group=FakeGroup(Group("k2", "stable", (owner,))), clock=lambda: 1_300.0)
    (note,) = report.notes
    assert note == (
        "unowned: market.trades.raw/1 (5 offsets waiting 5m00s): records beyond the lake's mark and no member of "
        "group k2 (stable) owns them; see `k2 status`"
    )
    assert report.ok  # a hint beside the verdict, not a violation: --to-end judges what did not land
    assert (
        audit(
            SETTINGS,
            catalog,
            log=log,
            group=FakeGroup(Group("k2", "stable", (replace(owner, partitions=frozenset({T0, T1})),))),
        ).notes
        == ()
    )


def test_a_group_that_cannot_be_read_is_a_note(catalog: Catalog) -> None:
    class Unreadable:
        def group(self, group_id: str) -> Group:
            raise ServiceUnavailable("no answer within 10s")

    land_trades(catalog, 0, list(range(0, 10)), {T0: 9})
    report = audit(SETTINGS, catalog, log=FakeLog({T0: 10, T1: 0, Q0: 0, R0: 0}), group=Unreadable())  # type: ignore[arg-type]
    assert report.ok and report.notes == ("the consumer group k2 could not be read: no answer within 10s",)
