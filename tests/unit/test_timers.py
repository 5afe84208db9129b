"""The leader's maintenance timers, as the settings describe them."""

from __future__ import annotations

from k2.agents.timers import maintenance_timers
from k2.settings import Settings


def test_by_default_the_leader_expires_snapshots_often_and_maintains_hourly() -> None:
    assert maintenance_timers(Settings()) == {"k2.maintain.timer": 3600.0, "k2.expire.timer": 300.0}


def test_a_zero_interval_is_no_timer() -> None:
    settings = Settings(maintain_interval_s=0, maintain_expire_interval_s=60)
    assert maintenance_timers(settings) == {"k2.expire.timer": 60.0}
    assert maintenance_timers(Settings(maintain_interval_s=0, maintain_expire_interval_s=0)) == {}
