"""The lake as the source of truth for positions: a table rolled back under a running worker, a group deleted.

Iceberg's own Kafka Connect sink loses or skips data when the consumer group and the table
disagree; K2 must land again what the lake lost, and must not read again what it holds.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.k2env import K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
TRADES_PER_PASS = 2243


def trades_rows(env: K2Env) -> int:
    return int(env.catalog().load_table("market_data.trades").scan(selected_fields=("kafka_offset",)).count())


def wait_for(what: str, done: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(1.0)


def test_a_table_rolled_back_under_a_running_worker_is_landed_again_exactly(sqlite_env: K2Env) -> None:
    env = sqlite_env
    worker = env.start_worker()
    env.k2("replay", str(SAMPLE), "--symbols", "MWR,DVN", "--no-progress")
    env.wait_landed()
    env.k2("replay", str(SAMPLE), "--symbols", "BHP", "--no-progress")  # later snapshots
    env.wait_landed()
    table = env.catalog().load_table("market_data.trades")
    first = min(table.snapshots(), key=lambda s: s.sequence_number)
    assert trades_rows(env) == TRADES_PER_PASS
    table.manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()
    assert trades_rows(env) < TRADES_PER_PASS, "the first snapshot should hold less than both replays"
    # No new input: the worker notices on its own, and lands exactly what the rollback took away.
    wait_for("the rolled-back trades landed again", lambda: trades_rows(env) == TRADES_PER_PASS)
    assert_law(env, settle_s=3)
    assert env.metric("k2_lake_regressions_total", table="market_data.trades") >= 1
    assert "went back under this worker" in worker.log.read_text(errors="replace")


def test_group_offsets_gone_the_worker_starts_at_the_lake_marks_and_reads_nothing_twice(sqlite_env: K2Env) -> None:
    env = sqlite_env
    worker = env.start_worker()
    env.k2("replay", str(SAMPLE), "--symbols", "MWR,DVN", "--no-progress")
    env.wait_landed()

    # After the burst, the group's committed offsets catch up with the lake within seconds.
    def agree() -> bool:
        rows = json.loads(env.get("/k2/lag"))["partitions"]
        return all(r["committed_offset"] == r["end_offset"] and r["lake_lag"] == 0 for r in rows)

    wait_for("committed offsets to agree with the lake", agree, timeout_s=30)
    worker.stop()
    admin = AdminClient({"bootstrap.servers": env.settings.kafka_bootstrap_servers})
    for future in admin.delete_consumer_groups([env.settings.app_id], request_timeout=30).values():
        future.result(60)
    restarted = env.start_worker()
    wait_for("the restarted worker to position its partitions", lambda: "starts at" in restarted.tail(400))
    time.sleep(5)
    assert env.metric("k2_events_consumed_total", topic=env.settings.trades_topic) == 0
    starts = re.findall(r"(\S+)/(\d+) starts at (\d+) \(group committed None, lake mark (\d+)\)", restarted.tail(400))
    assert starts and all(int(start) == int(mark) + 1 for _, _, start, mark in starts), restarted.tail(60)
    env.k2("replay", str(SAMPLE), "--symbols", "BHP", "--no-progress")
    env.wait_landed()
    assert trades_rows(env) == TRADES_PER_PASS
    assert_law(env)
