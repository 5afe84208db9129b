"""`k2 maintain` while a worker keeps committing: fewer files, every row once, the marks kept.

And a reader that follows the table is not misled: each compaction is one ``replace``
snapshot, time travel to any snapshot shows every row once, an incremental read across
compactions gets each row once, and the files say they are sorted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from k2.lake.maintain import MAINTENANCE_KEY
from tests.integration.k2env import K2Env
from tests.integration.law import assert_law
from tests.unit.lake_history import history, history_problems

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
PASSES = 4
CATALOGS = ["sqlite", pytest.param("rest", marks=pytest.mark.rest)]


def files_per_day(env: K2Env, table: str) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for task in env.catalog().load_table(table).scan().plan_files():
        day = task.file.partition[0]
        out[day] = out.get(day, 0) + 1
    return out


def assert_followable(env: K2Env, table_name: str) -> None:
    """What a reader following the table sees (see tests/unit/lake_history.py), and sorted files."""
    table = env.catalog().load_table(table_name)
    assert history_problems(table) == []
    maintenance = [s for s in history(table) if s.summary and MAINTENANCE_KEY in s.summary.additional_properties]
    assert all(s.summary is not None and s.summary.operation.value == "replace" for s in maintenance)
    order = table.sort_order().order_id
    assert {task.file.sort_order_id for task in table.scan().plan_files()} <= {order}


@pytest.mark.parametrize("catalog_kind", CATALOGS)
def test_maintenance_beside_a_committing_worker_loses_and_doubles_nothing(
    stack: Any, tmp_path: Path, catalog_kind: str
) -> None:
    env = K2Env(
        stack,
        tmp_path,
        catalog_kind,
        K2_MAINTAIN_MIN_FILES="2",
        K2_MAINTAIN_SNAPSHOT_RETENTION_S="0",
        K2_MAINTAIN_KEEP_SNAPSHOTS="3",
        K2_MAINTAIN_ORPHAN_MIN_AGE_S="3600",  # files of the worker's commits in flight are younger: left alone
    )
    if catalog_kind == "rest":
        env.drop_tables()
    try:
        env.k2("init")
        env.start_worker()
        replay = env.replay_in_background(str(SAMPLE), "--loop", str(PASSES), "--rate", "3000")
        env.wait_first_commit()
        runs = []
        while replay.poll() is None:  # maintenance rounds while the worker commits every second
            runs.append(json.loads(env.k2("maintain", "--json", timeout=300).stdout))
            assert_followable(env, "market_data.trades")
        assert replay.returncode == 0
        env.wait_landed()
        last = json.loads(env.k2("maintain", "--json", timeout=300).stdout)
        compacted = [day for run in [*runs, last] for table in run for day in table["compacted"]]
        expiries = [table for run in [*runs, last] for table in run if table["expired"]]
        assert expiries, "snapshots were expired"
        assert all(t["expired_until"] and any("must start again" in n for n in t["notes"]) for t in expiries)
        assert compacted, "some past day had small files to compact"
        # Nothing commits any more: every day of the sample (all past days) is one file now.
        assert set(files_per_day(env, "market_data.trades").values()) == {1}
        trades = env.catalog().load_table("market_data.trades")
        assert trades.scan(selected_fields=("kafka_offset",)).count() == PASSES * 2243
        assert len(trades.snapshots()) <= 3 + 2  # expired down to the newest, plus what landed since
        for table_name in ("market_data.trades", "market_data.quotes"):
            assert_followable(env, table_name)
        assert_law(env)
        # With the worker stopped, nothing is in flight: every file nothing refers to goes.
        env.close()
        env.env["K2_MAINTAIN_ORPHAN_MIN_AGE_S"] = "0"
        final = json.loads(env.k2("maintain", "--json", timeout=300).stdout)
        assert sum(t["orphans"] for t in final) > 0
        assert trades.refresh().scan(selected_fields=("kafka_offset",)).count() == PASSES * 2243
        assert_law(env)
    finally:
        env.close()
