"""SIGTERM: stop consuming, flush what is buffered, commit, exit 0 within the grace period."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from k2.admin.watermarks import end_offsets
from tests.integration.k2env import ROOT, K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
EVENTS = 2243 + 2609


def committed(env: K2Env) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": env.settings.kafka_bootstrap_servers})
    request = [ConsumerGroupTopicPartitions(env.settings.app_id)]
    result = admin.list_consumer_group_offsets(request)[env.settings.app_id].result(30)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def test_sigterm_flushes_what_is_buffered_and_exits_zero(stack: Any, tmp_path: Path) -> None:
    # Nothing would land before a minute: what lands, the shutdown landed.
    env = K2Env(stack, tmp_path, "sqlite", K2_FLUSH_INTERVAL_S="60", K2_FLUSH_MAX_ROWS="1000000")
    try:
        env.k2("init")
        worker = env.start_worker()
        env.k2("replay", str(SAMPLE), "--no-progress")
        deadline = time.monotonic() + 120
        while env.metric("k2_events_accepted_total") < EVENTS:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(1)
        assert env.landed() == {}
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(env.settings.shutdown_timeout_s + 15) == 0
        assert time.monotonic() - began < env.settings.shutdown_timeout_s + 10
        assert "shutdown: flushed" in worker.tail(200)
        env.wait_landed(timeout_s=5)  # already there: no worker runs any more
        assert committed(env) == end_offsets(env.settings, env.settings.source_topics)  # and committed
        assert_law(env)
    finally:
        env.close()
