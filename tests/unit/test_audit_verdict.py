"""One partition judged: holes, doubles within and across tables, marks, log bounds, Kafka's say."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from k2.audit.ranges import EMPTY, Ranges
from k2.audit.verdict import PartitionVerdict, TableOffsets, confirm_missing, judge_partition, still_missing
from k2.lake.schemas import COMPANIES, REJECTS, SEQUENCE_GAPS, TRADES

TOPIC = "market.trades.raw"


def offs(*parts: range | list[int]) -> pa.Array:
    return pa.array([o for p in parts for o in p], pa.int64())


def judge(
    trades: pa.Array,
    rejects: pa.Array | None = None,
    *,
    log_start: int = 0,
    log_end: int = 100,
    mark: int | None = 99,
    trades_mark: int | None = None,
    rejects_mark: int | None = None,
    **kwargs: object,
) -> PartitionVerdict:
    landed = [TableOffsets(TRADES, trades, mark if trades_mark is None else trades_mark)]
    if rejects is not None:
        landed.append(TableOffsets(REJECTS, rejects, mark if rejects_mark is None else rejects_mark))
    return judge_partition(
        TOPIC,
        3,
        log_start=log_start,
        log_end=log_end,
        lake_mark=mark,
        landed=landed,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_offset_once_is_the_law() -> None:
    v = judge(offs(range(0, 90)), offs(range(90, 100)))
    assert v.ok
    assert (v.checked, v.lag, v.rows) == (100, 0, {TRADES: 90, REJECTS: 10})
    assert v.missing == EMPTY and v.doubled == EMPTY and not v.beyond_mark


def test_holes_are_missing_ranges() -> None:
    v = judge(offs(range(0, 40), range(45, 97), [98]))
    assert not v.ok
    assert v.missing.pairs() == [(40, 44), (97, 97), (99, 99)]
    assert v.missing.count == 7
    assert not v.verified  # candidates until Kafka is asked


def test_doubled_within_one_table() -> None:
    v = judge(offs(range(0, 100), [7, 8, 8]))
    assert not v.ok
    assert v.doubled.pairs() == [(7, 8)]
    assert v.doubled_rows == {TRADES: 5}
    assert v.missing == EMPTY


def test_doubled_across_tables() -> None:
    v = judge(offs(range(0, 100)), offs([9, 50, 51]))
    assert v.doubled.pairs() == [(9, 9), (50, 51)]
    assert v.doubled_rows == {TRADES: 3, REJECTS: 3}
    assert not v.ok


def test_doubles_count_below_the_log_start_but_holes_do_not() -> None:
    v = judge(offs([3, 3], range(60, 100)), log_start=50)
    assert v.doubled.pairs() == [(3, 3)]
    assert v.missing.pairs() == [(50, 59)]  # the window starts at the log start; 0..49 are gone from Kafka
    assert v.checked == 50


def test_offsets_above_the_mark_are_lag_not_missing() -> None:
    v = judge(offs(range(0, 60), [75]), log_end=150, mark=80)
    assert v.missing.pairs() == [(60, 74), (76, 80)]
    assert (v.checked_to, v.lag) == (80, 69)


def test_rows_above_their_own_tables_mark() -> None:
    # The lake's mark (99, from the rejects) covers them, but trades' own summary stops at 90.
    v = judge(offs(range(0, 95)), offs(range(95, 100)), trades_mark=90)
    assert v.missing == EMPTY and v.doubled == EMPTY
    assert v.beyond_mark == {TRADES: Ranges.of((91, 94))}
    assert v.table_marks[TRADES] == 90
    assert not v.ok


def test_a_table_without_a_mark_has_every_row_beyond_it() -> None:
    v = judge_partition(
        TOPIC,
        0,
        log_start=0,
        log_end=10,
        lake_mark=9,
        landed=[TableOffsets(TRADES, offs(range(0, 10)), 9), TableOffsets(REJECTS, offs([20, 21]), None)],
    )
    assert v.beyond_mark == {REJECTS: Ranges.of((20, 21))}


def test_a_mark_kafka_never_reached() -> None:
    v = judge(offs(range(0, 200)), log_end=150, mark=199)
    assert v.mark_beyond_end and not v.ok
    assert v.checked_to == 149 and v.missing == EMPTY


def test_upserted_rows_only_held_to_their_mark() -> None:
    # Companies rows are versions, also in company_versions: not doubles; only their mark is checked.
    v = judge(offs(range(0, 100)), upserted=[TableOffsets(COMPANIES, offs([5, 99]), 50)])
    assert v.doubled == EMPTY
    assert v.beyond_mark == {COMPANIES: Ranges.of((99, 99))}


def test_gap_rows_must_not_repeat() -> None:
    v = judge(offs(range(0, 100)), gaps=TableOffsets(SEQUENCE_GAPS, offs([4, 17, 17, 30]), 99))
    assert v.gaps_doubled.pairs() == [(17, 17)]
    assert v.doubled == EMPTY and not v.ok


def test_kafka_decides_which_holes_are_missing() -> None:
    # 40..44: 41 and 43 are a transaction's markers / compacted away; Kafka shows records at the rest.
    v = confirm_missing(judge(offs(range(0, 40), range(45, 100))), offs([39, 40, 42, 44, 45]))
    assert v.verified
    assert v.missing.pairs() == [(40, 40), (42, 42), (44, 44)]
    assert v.no_record == 2


def test_holes_kafka_holds_nothing_at_are_no_violation() -> None:
    v = confirm_missing(judge(offs(range(0, 40), range(45, 100))), offs([]))
    assert v.ok and v.no_record == 5 and v.missing == EMPTY


def test_settling_keeps_only_what_stayed_missing() -> None:
    first = confirm_missing(judge(offs(range(0, 40), range(50, 100))), offs(range(40, 50)))
    later = judge(offs(range(0, 45), range(50, 120), [140]), log_end=150, mark=140)
    settled = still_missing(first, later)
    # 40..44 landed meanwhile; 45..49 stayed missing; 120..139 is a newer flush, not judged yet.
    assert settled.missing.pairs() == [(45, 49)]
    assert settled.verified and settled.mark == 140


def test_empty_partition() -> None:
    v = judge_partition(TOPIC, 0, log_start=0, log_end=0, lake_mark=None, landed=[TableOffsets(TRADES, offs(), None)])
    assert v.ok and v.checked == 0 and v.lag == 0


def test_a_topic_no_table_lands_yet_is_all_lag() -> None:
    v = judge_partition(TOPIC, 0, log_start=10, log_end=30, lake_mark=None, landed=[])
    assert v.ok
    assert (v.checked, v.lag, v.missing) == (0, 20, EMPTY)


def test_offsets_retention_deleted_before_they_landed_are_lost() -> None:
    # Landed to 49; Kafka's log now starts at 80: 50-79 never landed and cannot be.
    v = judge(offs(range(0, 50)), log_start=80, log_end=100, mark=49)
    assert v.lost_to_retention == Ranges.of((50, 79)) and not v.ok
    # The lake caught up before retention: nothing lost.
    assert judge(offs(range(0, 100)), log_start=80, log_end=100, mark=99).lost_to_retention == EMPTY
    # A lake that never covered the partition started where Kafka's log started: not judged.
    assert judge(offs([]), log_start=80, log_end=100, mark=None).lost_to_retention == EMPTY


def test_to_the_end_what_did_not_land_is_missing() -> None:
    v = judge(offs(range(0, 60)), log_end=100, mark=59, to_end=True)
    assert (v.checked_to, v.checked, v.lag, v.waiting) == (99, 100, 0, 40)
    assert v.missing == Ranges.of((60, 99)) and not v.ok
    # A partition no table lands: everything Kafka holds is missing.
    never = judge_partition(TOPIC, 0, log_start=10, log_end=30, lake_mark=None, landed=[], to_end=True)
    assert never.missing == Ranges.of((10, 29)) and never.lag == 0


def test_rows_where_kafka_holds_no_committed_record() -> None:
    # Kafka, read_committed over the whole window: 10 and 20 are markers, 11-13 an aborted transaction.
    committed = offs(range(0, 10), range(14, 20), range(21, 100))
    v = judge(offs(range(0, 10), range(11, 14), range(14, 20), range(21, 98)), committed=committed)
    assert v.not_committed == Ranges.of((11, 13)) and v.committed_read and not v.ok
    # The holes were confirmed from the same read: 98 and 99 hold records, 10 and 20 hold none.
    assert (v.missing, v.verified, v.no_record) == (Ranges.of((98, 99)), True, 2)
    faithful = judge(offs(range(0, 10), range(14, 20), range(21, 100)), committed=committed)
    assert faithful.ok and faithful.no_record == 5 and faithful.not_committed == EMPTY


def test_on_a_compacted_topic_only_records_an_uncommitted_reader_sees_are_not_committed() -> None:
    # 5 was compacted away after it landed (neither reader sees it); 7 is an aborted record.
    committed = offs(range(0, 5), [6], range(8, 10))
    v = judge(offs(range(0, 10)), log_end=10, mark=9, committed=committed, uncommitted=offs(range(0, 5), range(6, 10)))
    assert v.not_committed == Ranges.of((7, 7))


def test_a_mark_in_an_open_transaction() -> None:
    # Kafka: end (last stable offset) 50, high watermark 60; the lake claims up to 55.
    v = judge(offs(range(0, 56)), log_end=50, mark=55, log_high=60)
    assert v.mark_in_open_transaction and v.open and not v.mark_beyond_end and not v.ok
    assert v.checked_to == 49 and v.missing == EMPTY
    below = judge(offs(range(0, 50)), log_end=50, mark=49, log_high=60)
    assert below.ok and below.open and below.lag == 0
    assert judge(offs(range(0, 61)), log_end=50, mark=60, log_high=60).mark_beyond_end


def test_lag_counts_from_the_first_record_above_the_mark() -> None:
    v = judge(offs(range(0, 90)), log_end=100, mark=89)
    assert v.lag == 10
    assert replace(v, waiting_from=100).lag == 0  # 90-99 are markers and aborted records only
    assert replace(v, waiting_from=95).lag == 5


def test_settling_keeps_what_was_not_committed() -> None:
    committed = offs(range(0, 10), range(13, 100))
    first = judge(offs(range(0, 10), range(10, 13), range(13, 100)), committed=committed)
    settled = still_missing(first, judge(offs(range(0, 100))))
    assert settled.not_committed == Ranges.of((10, 12)) and settled.committed_read
