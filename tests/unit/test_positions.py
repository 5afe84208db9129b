"""Where a partition starts when a worker takes it: after everything the lake or the restored buffer settles."""

from __future__ import annotations

from k2.buffer.chunks import GAPS, REJECTS, ROWS, ChunkKey
from k2.pipeline.positions import covered_until, start_positions


def rows(first: int, last: int) -> ChunkKey:
    return ChunkKey(ROWS, 0, first, last, last - first + 1)


def rejects(first: int, last: int) -> ChunkKey:
    return ChunkKey(REJECTS, 0, first, last, 1)


def plan(committed: int | None, mark: int | None, chunks: list[ChunkKey], log_start: int | None = 0):  # type: ignore[no-untyped-def]
    return start_positions({"p": committed}, {"p": mark}, {"p": chunks}, {"p": log_start})


def test_a_restart_with_its_buffer_restored_starts_at_the_committed_offset() -> None:
    # Landed up to 99; the buffer holds 100-149 (rows and a reject in between); the group committed 150.
    p = plan(150, 99, [rows(100, 120), rejects(121, 121), rows(122, 149)])
    assert p.starts["p"] == 150 and p.discard["p"] == []


def test_chunks_at_or_after_the_start_are_dropped_to_be_rebuilt() -> None:
    # The old owner buffered 150-199 but committed only 150: those chunks are not trusted.
    p = plan(150, 99, [rows(100, 149), rows(150, 199)])
    assert p.starts["p"] == 150 and p.discard["p"] == [rows(150, 199)]


def test_a_lake_ahead_of_the_group_starts_after_the_lake() -> None:
    # A flush landed 0-299 after the last commit (150): nothing landed is read again.
    p = plan(150, 299, [rows(150, 299)])
    assert p.starts["p"] == 300 and p.discard["p"] == []


def test_a_partially_failed_flush_keeps_its_unlanded_chunks() -> None:
    # Trades landed to 200 but the rejects commit of 190 failed: that chunk stays and lands later.
    held = [rejects(190, 190)]
    p = plan(120, 200, held)
    assert p.starts["p"] == 201 and p.discard["p"] == []


def test_a_lake_that_lost_its_history_is_landed_again_from_the_hole() -> None:
    # Tables recreated: no marks; the buffer only holds 900-999; the group committed 1000.
    p = plan(1000, None, [rows(900, 999)], log_start=0)
    assert p.starts["p"] == 0 and p.discard["p"] == [rows(900, 999)]
    # Rolled back to 499: 500-899 are in no chunk, so the start is 500.
    p = plan(1000, 499, [rows(900, 999)])
    assert p.starts["p"] == 500 and p.discard["p"] == [rows(900, 999)]


def test_group_offsets_gone_start_from_the_lake() -> None:
    assert plan(None, 799, []).starts["p"] == 800
    assert plan(None, None, [], log_start=None).starts["p"] is None
    assert plan(None, None, [], log_start=40).starts["p"] == 40


def test_offsets_deleted_by_retention_before_landing_are_reported_lost() -> None:
    p = plan(None, 99, [], log_start=150)
    assert p.starts["p"] == 150 and p.lost["p"] == (100, 150)


def test_coverage_ignores_gap_rows_and_stops_at_a_hole() -> None:
    gap = ChunkKey(GAPS, 0, 130, 130, 1)
    assert covered_until(100, [rows(100, 110), gap, rows(111, 120)]) == 121
    assert covered_until(100, [rows(100, 110), rows(112, 120)]) == 111
    assert covered_until(100, [rows(50, 105), rows(106, 106)]) == 107
    assert covered_until(100, []) == 100


def test_a_table_that_went_back_lands_again_from_its_floor() -> None:
    # Landed to 299 (merged over tables), the group committed 300, the buffer holds 300-349; then
    # trades was rolled back to 99. The floor (100) wins over every other reading, and what is
    # buffered from the floor on is rebuilt from Kafka.
    p = start_positions({"p": 350}, {"p": 299}, {"p": [rows(300, 349)]}, {"p": 0}, {"p": 100})
    assert p.starts["p"] == 100 and p.discard["p"] == [rows(300, 349)]
    # Without a floor the same readings start after the buffer.
    assert start_positions({"p": 350}, {"p": 299}, {"p": [rows(300, 349)]}, {"p": 0}).starts["p"] == 350


def test_a_floor_below_the_log_start_is_reported_lost() -> None:
    p = start_positions({"p": 500}, {"p": 499}, {"p": []}, {"p": 200}, {"p": 100})
    assert p.starts["p"] == 200 and p.lost["p"] == (100, 200)
