"""Rejects with a second life: list them, fix the cause, send them back; each lands once, the law holds."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from k2.avro.codec import encode, parse_schema
from k2.avro.registry import registry_client
from k2.avro.schemas import CONTRACTS
from tests.integration.k2env import K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def v2_trade_schema() -> dict[str, Any]:
    tree: dict[str, Any] = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None, "doc": "Trade id."})
    return tree


def test_rejects_sent_back_once_the_cause_is_fixed_land_once(sqlite_env: K2Env) -> None:
    env = sqlite_env
    s = env.settings
    env.start_worker()
    env.k2("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")
    env.wait_landed()
    # A producer writes trades with a schema registered under another subject: wrong_subject.
    tree = v2_trade_schema()
    client = registry_client(s)
    scratch = f"k2-test-scratch-{uuid.uuid4().hex[:6]}-value"
    schema_id = client.register_schema(scratch, Schema(json.dumps(tree), "AVRO"))
    v2 = parse_schema(tree)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
    for i in range(3):
        record = {
            "symbol": "XYZ", "company_id": 1, "exchange": "ASX", "exchange_timestamp": 1_394_406_000_000 + i,
            "price": Decimal("1.500000"), "volume": 10, "qualifiers": 0, "venue": "", "buyer_id": None,
            "ingestion_timestamp": 1_394_406_000_000, "sequence_number": i + 1, "trade_id": f"T{i}",
        }  # fmt: skip
        producer.produce(s.trades_topic, key=b"XYZ", value=encode(schema_id, v2, record), headers=[("trace", b"x")])
    assert producer.flush(30) == 0
    env.wait_landed()
    listed = env.k2("rejects", "list", "--reason", "wrong_subject").stdout
    assert "3 reject(s): wrong_subject 3" in listed
    # The cause is fixed: the same schema (so the same id) registered under the trades subject.
    assert client.register_schema(CONTRACTS["trade"].subject(s), Schema(json.dumps(tree), "AVRO")) == schema_id
    env.workers[0].stop()
    env.start_worker()  # a fresh worker: the old one remembers for 30 s that the id was not the subject's
    dry = env.k2("rejects", "replay", "--reason", "wrong_subject").stdout
    assert "3 of 3 selected reject(s) would be sent" in dry and "nothing sent" in dry
    sent = env.k2("rejects", "replay", "--reason", "wrong_subject", "--yes").stdout
    assert "3 of 3 selected reject(s) sent again" in sent
    env.wait_landed()
    trades = env.catalog().load_table("market_data.trades").scan().to_arrow().to_pylist()
    assert sorted(r["trade_id"] for r in trades if r["symbol"] == "XYZ") == ["T0", "T1", "T2"]
    again = env.k2("rejects", "replay", "--reason", "wrong_subject", "--yes").stdout
    assert "0 of 3 selected reject(s) sent again; 3 sent by an earlier run" in again
    assert "redriven to" in env.k2("rejects", "list").stdout
    assert_law(env)
