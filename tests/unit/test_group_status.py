"""The group's view (``k2 status``), pure: who owns what, the lags counted from first records, the unowned first."""

from __future__ import annotations

import json

from k2.admin.watermarks import FirstRecord, LogEnds
from k2.observe.group import (
    Group,
    GroupStatus,
    Member,
    consumer_start,
    format_age,
    lake_start,
    partition_statuses,
    reuse_first,
)

T0, T1, T2 = ("market.trades.raw", 0), ("market.trades.raw", 1), ("market.trades.raw", 2)
NOW_MS = 1_000_000_000
W1 = Member("faust-0.15.3-1111-aaaaaaaa", "faust-0.15.3", "/10.0.0.1", frozenset({T0, ("k2-buffer-changelog", 0)}))


def view(group: Group, **overrides: object) -> GroupStatus:
    """Three partitions: 0 owned and behind, 1 with nothing waiting, 2 unowned with records waiting 6 minutes."""
    ends = {T0: LogEnds(0, 100, 100), T1: LogEnds(0, 50, 53), T2: LogEnds(10, 40, 40)}
    committed = {T0: 95, T1: 50, T2: None}
    marks = {T0: 89, T1: 48}
    waiting = {T0: FirstRecord(90, NOW_MS - 2_000), T1: None, T2: FirstRecord(10, NOW_MS - 372_000)}
    consumer = {T0: FirstRecord(95, NOW_MS - 1_000), T1: None, T2: FirstRecord(10, NOW_MS - 372_000)}
    args = {"ends": ends, "committed": committed, "marks": marks, "waiting": waiting, "consumer_next": consumer}
    args.update(overrides)
    return GroupStatus(group, partition_statuses(group=group, **args), NOW_MS)  # type: ignore[arg-type]


def test_where_the_lake_and_the_group_read_next() -> None:
    ends = LogEnds(10, 100, 120)
    assert lake_start(ends, None) == 10 and lake_start(ends, 5) == 10 and lake_start(ends, 49) == 50
    assert consumer_start(ends, None) == 10 and consumer_start(ends, 60) == 60


def test_one_read_answers_for_both_when_it_can() -> None:
    found = FirstRecord(70, None)
    assert reuse_first(60, 50, found) == (True, found)  # between the read's start and what it found
    assert reuse_first(70, 50, found) == (True, found)
    assert reuse_first(71, 50, found) == (False, None)  # past it: the next record is not known
    assert reuse_first(40, 50, found) == (False, None)  # before the read began
    assert reuse_first(80, 50, None) == (True, None)  # nothing from 50 to the end: nothing from 80 either


def test_lags_count_from_first_records_to_the_last_stable_offset() -> None:
    p0, p1, p2 = view(Group("k2", "stable", (W1,))).partitions
    assert (p0.lake_lag, p0.consumer_lag, p0.owner) == (10, 5, W1)
    # Partition 1: 49 is a marker, 50-52 a transaction still open: no lag at all.
    assert (p1.lake_lag, p1.consumer_lag, p1.ends.open) == (0, 0, 3)
    assert (p2.lake_lag, p2.owner, p2.unowned_with_lag) == (30, None, True)
    assert p2.waited_s(NOW_MS) == 372.0 and p1.waited_s(NOW_MS) is None


def test_partitions_nobody_owns_are_named_first_and_exit_1() -> None:
    status = view(Group("k2", "stable", (W1,)))
    assert [p.where for p in status.unowned] == ["market.trades.raw/2"] and status.exit_code == 1
    lines = status.lines()
    assert lines[0] == "group k2: stable, 1 member, assignor -"
    assert lines[1] == "  faust-0.15.3@10.0.0.1#aaaaaaaa: 1 source partition"
    assert lines[3:5] == [
        "NOT LANDING: 1 partition with records waiting and no owner:",
        "  market.trades.raw/2: 30 offsets waiting 6m12s (from offset 10)",
    ]
    assert "open transaction market.trades.raw/1: offsets 50-52 are not committed yet" in status.render()
    assert lines[-1].startswith("NOT LANDING: 1 partition with records waiting and no owner; 3 partitions")
    assert status.unowned_line() == (
        "unowned: market.trades.raw/2 (30 offsets waiting 6m12s): records beyond the lake's mark and no member of "
        "group k2 (stable) owns them; see `k2 status`"
    )


def test_the_table() -> None:
    table = view(Group("k2", "stable", (W1,))).table()
    assert table[0].split() == [
        *("topic", "partition", "end", "open", "committed", "in", "lake", "owner"),
        *("consumer", "lag", "lake", "lag", "waited"),
    ]
    assert table[1].split() == ["market.trades.raw", "0", "100", "-", "95", "89", W1.label, "5", "10", "2s"]
    assert table[2].split() == ["market.trades.raw", "1", "50", "3", "50", "48", "-", "0", "0", "-"]
    assert table[3].split() == ["market.trades.raw", "2", "40", "-", "-", "-", "NONE", "30", "30", "6m12s"]


def test_an_empty_group_while_records_wait_is_exit_1() -> None:
    status = view(Group("k2", "empty"))
    assert [p.where for p in status.unowned] == ["market.trades.raw/2", "market.trades.raw/0"]  # longest wait first
    assert status.exit_code == 1


def test_every_partition_owned_or_caught_up_is_exit_0() -> None:
    everyone = Member("m2-bbbbbbbb", "faust-0.15.3", "/10.0.0.2", frozenset({T1, T2}))
    status = view(Group("k2", "stable", (W1, everyone), "faust"))
    assert status.exit_code == 0 and status.unowned_line() is None
    assert (
        status.summary() == "every partition with records waiting is owned; 3 partitions, lake lag 40, consumer lag 35"
    )
    # Nothing waits where nobody owns: fine too.
    assert view(Group("k2", "empty"), waiting={T0: None, T1: None, T2: None}).exit_code == 0


def test_a_rebalance_is_said() -> None:
    status = view(Group("k2", "preparing_rebalance"))
    assert status.group.rebalancing and "(the group is rebalancing: run again in a moment)" in status.summary()


def test_json() -> None:
    doc = json.loads(json.dumps(view(Group("k2", "stable", (W1,), "faust")).to_dict()))
    assert doc["ok"] is False and doc["unowned"] == ["market.trades.raw/2"]
    assert doc["group"]["protocol"] == "faust"
    assert doc["group"]["members"][0]["host"] == "10.0.0.1"
    p1 = doc["partitions"][1]
    assert (p1["end"], p1["high_watermark"], p1["open_transaction"], p1["lake_lag"]) == (50, 53, 3, 0)
    p2 = doc["partitions"][2]
    assert p2["owner"] is None and p2["oldest_waiting"] == {"offset": 10, "timestamp_ms": NOW_MS - 372_000}
    assert p2["waited_s"] == 372.0 and p2["unowned_with_lag"] is True


def test_ages() -> None:
    assert [format_age(s) for s in (None, -3, 0, 59.9, 60, 372, 3600, 11_040, 86_400 * 2 + 3 * 3600)] == [
        "?", "0s", "0s", "59s", "1m00s", "6m12s", "1h00m", "3h04m", "2d03h",
    ]  # fmt: skip
