"""The partition lifecycle, driven through the orders faust's rebalances produce (no Kafka)."""

from __future__ import annotations

from faust.types import TP

from k2.pipeline.lifecycle import Lifecycle, Phase

T0, T1, T2, T4 = TP("trades", 0), TP("trades", 1), TP("trades", 2), TP("trades", 4)


def clocked() -> tuple[Lifecycle, list[float]]:
    now = [0.0]
    return Lifecycle(clock=lambda: now[0]), now


def phases(lc: Lifecycle) -> dict[TP, str]:
    return {tp: s.phase.value for tp in lc.held() if (s := lc.state(tp)) is not None}


def test_a_partition_goes_assigned_positioning_consuming_revoking_forgotten() -> None:
    lc, now = clocked()
    lc.assigned({T0}, generation=3)
    assert phases(lc) == {T0: "assigned"}
    assert lc.sought({T0: 10}) == set()  # tables not restored yet: faust seeks again after the restore
    lc.restored(3)
    assert lc.sought({T0: 10}) == {T0}
    assert lc.state(T0).committed == 10  # type: ignore[union-attr]
    assert lc.to_position() == {T0}
    now[0] = 4.0
    assert lc.positioned({T0}, generation=3) == {T0}
    assert lc.is_consuming(T0) and lc.consuming_set() == {T0}
    state = lc.state(T0)
    assert state is not None and state.since - state.assigned_at == 4.0
    assert lc.revoking({T0, T1}) == {T0}
    assert phases(lc) == {T0: "revoking"} and not lc.is_consuming(T0)
    lc.assigned(set(), generation=4)  # the next assignment, without it
    assert lc.held() == set()


def test_a_seek_names_partitions_revoked_since_and_only_held_ones_are_positioned() -> None:
    """The join stall: faust's read offsets still held partitions revoked since, and positioning them
    (seek: "No current assignment") killed the positioning of the partitions really assigned."""
    lc, _ = clocked()
    lc.assigned({T0, T1, T2, T4}, generation=1)
    lc.restored(1)
    lc.sought({tp: 0 for tp in (T0, T1, T2, T4)})
    lc.revoking({T0, T1, T2, T4})
    lc.assigned({T4}, generation=2)
    lc.restored(2)
    assert lc.sought({T0: 5, T1: 6, T2: 7, T4: 8}) == {T4}
    assert lc.held() == {T4} and lc.to_position() == {T4}


def test_overlapping_generations_the_older_ones_calls_change_nothing() -> None:
    lc, _ = clocked()
    lc.assigned({T0, T1}, generation=5)
    lc.revoking({T0, T1})
    lc.assigned({T1}, generation=6)
    lc.restored(5)  # the restore of generation 5 completes late
    assert lc.sought({T1: 3}) == set()
    lc.assigned({T0}, generation=5)  # an assignment older than the newest: ignored
    assert lc.held() == {T1} and lc.generation == 6
    lc.restored(6)
    assert lc.sought({T1: 3}) == {T1}
    assert lc.positioned({T1}, generation=5) == set()  # an attempt of an older generation
    assert lc.positioned({T1}, generation=6) == {T1}


def test_revocation_during_positioning_leaves_nothing_to_position_and_nothing_consuming() -> None:
    lc, _ = clocked()
    lc.assigned({T0, T1}, generation=2)
    lc.restored(2)
    lc.sought({T0: 1, T1: 1})
    lc.revoking({T0, T1})
    assert lc.to_position() == set()
    assert lc.positioned({T0, T1}, generation=2) == set()  # the attempt finishing late positions nothing
    assert lc.consuming_set() == set()


def test_faust_seeking_again_sends_consuming_partitions_back_to_positioning() -> None:
    lc, _ = clocked()
    lc.assigned({T0}, generation=1)
    lc.restored(1)
    lc.sought({T0: 1})
    lc.positioned({T0}, generation=1)
    assert lc.sought({T0: 7}) == {T0}  # faust's seek moved the consumer: K2's start must be sought again
    assert phases(lc) == {T0: "positioning"}


def test_reposition_only_moves_consuming_partitions() -> None:
    lc, _ = clocked()
    lc.assigned({T0, T1}, generation=1)
    lc.restored(1)
    lc.sought({T0: 1})
    lc.positioned({T0}, generation=1)
    assert lc.reposition({T0, T1}) == {T0}
    assert phases(lc) == {T0: "positioning", T1: "assigned"}


def test_overdue_names_partitions_past_their_bound_with_why() -> None:
    lc, now = clocked()
    lc.assigned({T0, T1}, generation=1)
    lc.restored(1)
    lc.sought({T0: 1})
    lc.attempt({T0})
    lc.waiting({T0}, "the Iceberg catalog is not loaded: ConnectionRefusedError")
    now[0] = 31.0
    overdue = lc.overdue(now[0], restore_bound_s=60.0, position_bound_s=30.0)
    assert set(overdue) == {T0}
    assert "positioning for 31s (1 attempt(s)): the Iceberg catalog is not loaded" in overdue[T0]
    now[0] = 61.0
    assert set(lc.overdue(now[0], restore_bound_s=60.0, position_bound_s=30.0)) == {T0, T1}
    assert lc.not_consuming().keys() == {T0, T1}


def test_forget_drops_everything() -> None:
    lc, _ = clocked()
    lc.assigned({T0}, generation=1)
    lc.restored(1)
    lc.forget()
    assert lc.held() == set() and lc.generation is None and lc.restored_generation is None
    assert Phase.CONSUMING.value == "consuming"
