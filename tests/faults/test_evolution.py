"""Schema evolution under faults: every value of every writer-schema version lands, whatever happens to the table.

Judged like every scenario (:meth:`Scenario.conclude`): the law, and each row equal to its source
record decoded with its own writer schema, field by field (an evolved column missing from the
table, or null where the source had a value, is a mismatch).
"""

from __future__ import annotations

import json
import threading

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from tests.faults.config import SAMPLE
from tests.faults.scenario import ScenarioFactory
from tests.faults.source import Registry, encode, make_producer, trade

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.rest, pytest.mark.timeout(7200)]


def test_o_schema_evolves_mid_run_a_table_is_recreated_and_a_worker_killed(scenario: ScenarioFactory) -> None:
    """A BACKWARD-compatible trade schema (an optional trade_id) registered while the sample flows; v1 and v2
    trades mixed; market_data.trades dropped and created again under the worker; the worker killed and
    restarted meanwhile. (Seen: after the table was created again the column never came back, and every v2
    value landed after that was dropped while the audit said the law holds.)"""
    with scenario("o_schema_evolution", "v2 schema mid-run, v1/v2 mixed, trades recreated, worker killed") as sc:
        cfg = sc.config
        sc.start(workers=1)
        env = sc.env
        topic = env.topics["trades"]
        registry = Registry(env.stack.schema_registry_url)
        v1_id, v1 = registry.latest(env.subject(topic))
        sc.replay(SAMPLE, "--loop", str(cfg.pick(2, 6)), "--rate", str(cfg.pick(800, 600)))
        sc.wait_landing(1000)
        tree = json.loads(registry.client.get_latest_version(env.subject(topic)).schema.schema_str)
        tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None})
        v2_id = registry.client.register_schema(env.subject(topic), Schema(json.dumps(tree), "AVRO"))
        v2 = fastavro.parse_schema(tree)
        per_round = cfg.pick(200, 1000)
        stop = threading.Event()
        counts = {"EV1": 0, "EV2": 0}

        def mixed() -> None:
            """v1 and v2 trades interleaved, each symbol with its own sequence numbers, until told to stop."""
            producer = make_producer(env.bootstrap)
            while not stop.is_set():
                for _ in range(per_round // 10):
                    for symbol, schema_id, schema in (("EV1", v1_id, v1), ("EV2", v2_id, v2)):
                        counts[symbol] += 1
                        n = counts[symbol]
                        extra = {"trade_id": f"T{n}"} if symbol == "EV2" else {}
                        value = encode(schema_id, schema, trade(symbol, n, **extra))
                        producer.produce(topic, key=symbol.encode(), value=value)
                producer.flush(30)
                stop.wait(0.5)
            assert producer.flush(30) == 0

        sender = threading.Thread(target=mixed, name="v1-v2-trades", daemon=True)
        with sc.fault("trade schema v2 registered; v1 and v2 trades mixed from now on"):
            sender.start()
            sc.sleep(cfg.pick(10, 30))
        with sc.fault("market_data.trades dropped and created again by `k2 init` (the contract's columns only)"):
            env.catalog().drop_table("market_data.trades")
            env.k2("init")
            sc.sleep(cfg.pick(10, 30))
        with sc.fault("the worker killed (SIGKILL) and a new one started"):
            for worker in env.live_workers():
                worker.kill()
            env.start_worker().wait_ready()
            sc.sleep(cfg.pick(10, 30))
        stop.set()
        sender.join(60)
        sc.notes.append(f"mixed trades sent: {counts}")
