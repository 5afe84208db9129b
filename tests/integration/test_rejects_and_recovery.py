"""Bad input, crashes and schema evolution, end to end against a running worker.

The law checked throughout: every offset consumed from the three source topics lands
exactly once in exactly one of the trades, quotes, companies or rejects tables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema

from k2.avro.codec import encode, parse_schema
from k2.avro.registry import lookup_schema_id, registry_client
from k2.avro.schemas import CONTRACTS
from k2.models import Reject
from tests.integration.k2env import K2Env, Worker, free_port
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
NOW_MS = 1_394_406_000_000  # 2014-03-09T23:00:00Z
MARKET_TABLES = ("market_data.trades", "market_data.quotes", "reference_data.companies")


def trade(**kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "symbol": "BHP", "company_id": 7078, "exchange": "ASX", "exchange_timestamp": NOW_MS,
        "price": Decimal("36.667000"), "volume": 100, "qualifiers": 0, "venue": "", "buyer_id": None,
        "ingestion_timestamp": NOW_MS, "sequence_number": 1,
    }  # fmt: skip
    rec.update(kw)
    return rec


def quote(**kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "symbol": "BHP", "company_id": 7078, "exchange": "ASX", "exchange_timestamp": NOW_MS,
        "bid_price": Decimal("36.66"), "bid_volume": 100, "ask_price": Decimal("36.67"), "ask_volume": 200,
        "ingestion_timestamp": NOW_MS, "sequence_number": 1,
    }  # fmt: skip
    rec.update(kw)
    return rec


CATALOGS = ["sqlite", pytest.param("rest", marks=pytest.mark.rest)]


@pytest.fixture(params=CATALOGS)
def catalog_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on the embedded SQLite catalog and on the REST catalog over S3."""
    kind: str = request.param
    return kind


def new_env(stack: Any, tmp_path: Path, catalog_kind: str, **overrides: str) -> K2Env:
    e = K2Env(stack, tmp_path, catalog_kind, **overrides)
    if catalog_kind == "rest":
        e.drop_tables()  # the REST catalog is shared: start from empty tables
    return e


@pytest.fixture
def env(stack: Any, tmp_path: Path, catalog_kind: str) -> Iterator[K2Env]:
    e = new_env(stack, tmp_path, catalog_kind)
    e.k2("init")
    yield e
    e.close()


def test_bad_messages_land_in_rejects_with_reasons_and_good_ones_are_unaffected(env: K2Env) -> None:
    client = registry_client(env.settings)
    ids = {name: lookup_schema_id(client, c.subject(env.settings), c.schema_str) for name, c in CONTRACTS.items()}
    t_schema, q_schema, r_schema = (CONTRACTS[n].parsed for n in ("trade", "quote", "reference_data"))
    good_trade = encode(ids["trade"], t_schema, trade())
    s = env.settings
    corpus: list[tuple[str, str, bytes | None]] = [
        (s.trades_topic, "not_confluent_framed", b"\x01" + os.urandom(39)),  # a first byte 0x00 is the magic byte
        (s.trades_topic, "not_confluent_framed", b"\x07" + good_trade[1:]),
        (s.trades_topic, "unknown_schema_id", b"\x00" + (2**31 - 7).to_bytes(4, "big") + good_trade[5:]),
        (s.trades_topic, "undecodable", good_trade[:-6]),
        (s.trades_topic, "wrong_subject", encode(ids["quote"], q_schema, quote())),
        (s.trades_topic, "invalid_value", encode(ids["trade"], t_schema, trade(price=Decimal(0)))),
        (s.trades_topic, "invalid_value", encode(ids["trade"], t_schema, trade(volume=0))),
        (s.trades_topic, "invalid_value", encode(ids["trade"], t_schema, trade(symbol=""))),
        (s.trades_topic, "invalid_value", encode(ids["trade"], t_schema, trade(exchange_timestamp=500_000_000_000))),
        (s.trades_topic, "invalid_value", encode(ids["trade"], t_schema, trade(exchange_timestamp=2**42))),
        (s.quotes_topic, "invalid_value", encode(ids["quote"], q_schema, quote(bid_price=Decimal("-1")))),
        (s.quotes_topic, "invalid_value", encode(ids["quote"], q_schema, quote(bid_price=Decimal(0),
                                                                               ask_price=Decimal(0)))),
        (s.quotes_topic, "invalid_value", encode(ids["quote"], q_schema, quote(ask_volume=-5))),
        (s.reference_topic, "invalid_value", encode(ids["reference_data"], r_schema, {
            "company_id": 0, "symbol": "ZZZ", "company_name": "Z", "isin": "AU0", "start_date": "2001-01-01",
            "end_date": None})),
        (s.reference_topic, "not_confluent_framed", b"{}"),
    ]  # fmt: skip
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "enable.idempotence": True})
    good = 0
    for i, (topic, _reason, value) in enumerate(corpus):
        producer.produce(s.trades_topic, key=b"BHP", value=encode(ids["trade"], t_schema, trade(sequence_number=i)))
        good += 1
        producer.produce(topic, key=f"bad-{i}".encode(), value=value, partition=0)
    crossed = encode(ids["quote"], q_schema, quote(bid_price=Decimal("37.8"), ask_price=Decimal("37.7")))
    producer.produce(s.quotes_topic, key=b"BHP", value=crossed)
    assert producer.flush(30) == 0
    env.start_worker()
    env.wait_landed()

    catalog = env.catalog()
    rejects = catalog.load_table("market_data.rejects").scan().to_arrow().to_pylist()
    by_key = {r["key"]: r for r in rejects}
    assert len(rejects) == len(corpus)
    for i, (topic, reason, value) in enumerate(corpus):
        row = by_key[f"bad-{i}".encode()]
        assert (row["source_topic"], row["reason"], row["value"]) == (topic, reason, value), i
        assert row["detail"]
        if reason == "invalid_value":
            assert "=" in row["detail"]  # names the field and its value
    assert catalog.load_table("market_data.trades").scan().to_arrow().num_rows == good
    assert catalog.load_table("market_data.quotes").scan().to_arrow().num_rows == 1  # the crossed quote

    # The rejects topic carries the original bytes with the reasons in headers.
    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": f"{s.app_id}-check",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([s.rejects_topic])
    got: dict[bytes, Any] = {}
    try:
        for _ in range(60):
            for msg in consumer.consume(100, timeout=1.0):
                if msg.error() is None:
                    got[msg.key()] = msg
            if len(got) >= len(corpus):
                break
    finally:
        consumer.close()
    assert len(got) == len(corpus)
    for i, (topic, reason, value) in enumerate(corpus):
        msg = got[f"bad-{i}".encode()]
        assert msg.value() == value
        meta = Reject.from_headers(msg.headers())
        assert (meta.reason, meta.source_topic, meta.source_partition) == (reason, topic, 0)
    assert_law(env)


def test_worker_killed_mid_stream_loses_nothing_and_doubles_nothing(
    stack: Any, tmp_path: Path, catalog_kind: str
) -> None:
    env = new_env(stack, tmp_path, catalog_kind, K2_FLUSH_MAX_ROWS="500")
    try:
        env.k2("init")
        worker = env.start_worker()
        replay = env.replay_in_background(str(SAMPLE), "--loop", "4", "--rate", "4000")
        # Let it commit part of the stream, then kill it without warning.
        env.wait_first_commit()
        catalog = env.catalog()
        worker.crash()
        landed_before = sum(n + 1 for n in env.landed().values())
        env.start_worker()
        assert replay.wait(300) == 0
        env.wait_landed()
        total = 4 * (2243 + 2609) + 4
        assert 0 < landed_before < total, "the crash should come mid-stream"
        assert catalog.load_table("market_data.trades").scan().to_arrow().num_rows == 4 * 2243
        assert catalog.load_table("market_data.quotes").scan().to_arrow().num_rows == 4 * 2609
        assert_law(env)
    finally:
        env.close()


def test_new_backward_compatible_schema_adds_a_column_without_restart(env: K2Env) -> None:
    env.start_worker()
    env.k2("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")
    env.wait_landed()
    s = env.settings
    tree = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append(
        {"name": "trade_id", "type": ["null", "string"], "default": None, "doc": "Exchange trade identifier."}
    )
    client = registry_client(s)
    v2_id = client.register_schema(CONTRACTS["trade"].subject(s), Schema(json.dumps(tree), "AVRO"))
    v1_id = lookup_schema_id(client, CONTRACTS["trade"].subject(s), CONTRACTS["trade"].schema_str)
    assert v1_id is not None and v2_id != v1_id
    v2 = parse_schema(tree)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
    for i in range(5):
        producer.produce(
            s.trades_topic,
            key=b"XYZ",
            value=encode(v2_id, v2, {**trade(symbol="XYZ", sequence_number=i), "trade_id": f"T{i}"}),
        )
        producer.produce(
            s.trades_topic,
            key=b"OLD",
            value=encode(v1_id, CONTRACTS["trade"].parsed, trade(symbol="OLD", sequence_number=i)),
        )
    assert producer.flush(30) == 0
    env.wait_landed()
    table = env.catalog().load_table("market_data.trades")
    assert table.schema().find_field("trade_id").required is False
    rows = table.scan().to_arrow().to_pylist()
    assert sorted(r["trade_id"] for r in rows if r["symbol"] == "XYZ") == [f"T{i}" for i in range(5)]
    assert all(r["trade_id"] is None for r in rows if r["symbol"] in ("OLD", "MWR"))
    assert len([r for r in rows if r["symbol"] == "OLD"]) == 5
    # Evolved once, not once per batch.
    assert len([s for s in table.metadata.schemas]) == 2
    assert_law(env)


def test_an_evolved_column_survives_its_table_being_created_again(env: K2Env) -> None:
    """Issue 17, seen: 50 v2 trades landed with trade_id; market_data.trades dropped and created again by
    `k2 init` under the running worker; 50 more v2 trades: 100 rows, trade_id on none, the column absent,
    and the audit said the law holds. The worker remembered the writer schema as applied, so the column was
    never added again, and the flush dropped every column the table lacked."""
    env.start_worker()
    s = env.settings
    tree = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None, "doc": "Trade id."})
    client = registry_client(s)
    v2_id = client.register_schema(CONTRACTS["trade"].subject(s), Schema(json.dumps(tree), "AVRO"))
    v2 = parse_schema(tree)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})

    def send(first: int, count: int) -> None:
        for i in range(first, first + count):
            value = encode(v2_id, v2, {**trade(symbol="XYZ", sequence_number=i + 1), "trade_id": f"T{i}"})
            producer.produce(s.trades_topic, key=b"XYZ", value=value)
        assert producer.flush(30) == 0

    def xyz_rows() -> list[dict[str, Any]]:
        rows = env.catalog().load_table("market_data.trades").scan().to_arrow().to_pylist()
        return [r for r in rows if r["symbol"] == "XYZ"]

    send(0, 50)
    env.wait_landed()
    assert sorted(r["trade_id"] for r in xyz_rows()) == sorted(f"T{i}" for i in range(50))
    env.catalog().drop_table("market_data.trades")
    env.k2("init")  # creates it again, with the contract's columns only
    send(50, 50)
    env.wait_landed(timeout_s=180, until=lambda: len(xyz_rows()) >= 100)
    rows = xyz_rows()
    assert len(rows) == 100 and {r.get("trade_id") for r in rows} == {f"T{i}" for i in range(100)}
    assert_law(env)


def test_tables_created_again_after_their_last_commit_are_landed_again(env: K2Env) -> None:
    """Seen in the fault suite (j, once in a loaded run): the reference tables were dropped and created again
    after the worker had last committed to them, and their topic had nothing more to send. Only the worker's
    idle lake check could notice; it met the recreation (a table UUID that changed) as an unexpected error,
    logged it at debug level and went on, so the reference records never landed again."""
    env.start_worker()
    env.k2("replay", str(SAMPLE), "--no-progress")
    env.wait_landed()

    def versions() -> int:
        return env.catalog().load_table("reference_data.company_versions").scan().to_arrow().num_rows

    landed = versions()
    assert landed > 0
    for name in ("reference_data.companies", "reference_data.company_versions"):
        env.catalog().drop_table(name)
    env.k2("init", "--skip-topics", "--skip-schemas")
    assert versions() == 0
    env.wait_landed(timeout_s=120, until=lambda: versions() == landed)
    assert_law(env)


def test_two_workers_share_the_load_and_survive_losing_one(stack: Any, tmp_path: Path) -> None:
    """Scale-out is the consumer group: a second worker joins mid-stream, then the first dies.

    The survivor restores the dead worker's buffered chunks from their changelogs and lands
    them; the offsets in Iceberg keep anything from landing twice.
    """
    env = new_env(stack, tmp_path, "sqlite", K2_FLUSH_MAX_ROWS="500")
    passes = 8
    try:
        env.k2("init")
        first = env.start_worker()
        # ~40 s of flow at 1000 events/s: a second worker can take 20 s to start on a loaded machine.
        replay = env.replay_in_background(str(SAMPLE), "--loop", str(passes), "--rate", "1000")
        time.sleep(2)
        second_env = dict(env.env, K2_WEB_PORT=str(free_port()))
        second = Worker(second_env, tmp_path / "worker-second.log")
        env.workers.append(second)
        second.wait_started()
        time.sleep(3)
        assert replay.poll() is None, "the replay ended before the first worker died: nothing tests the handover"
        first.crash()
        assert replay.wait(300) == 0
        env.wait_landed(timeout_s=180)
        catalog = env.catalog()
        assert catalog.load_table("market_data.trades").scan().to_arrow().num_rows == passes * 2243
        assert catalog.load_table("market_data.quotes").scan().to_arrow().num_rows == passes * 2609
        assert_law(env)
        workers = {
            snap.summary.additional_properties.get("k2.worker-id")
            for snap in catalog.load_table("market_data.trades").snapshots()
            if snap.summary is not None
        }
        assert len(workers - {None}) == 2, f"both workers should have committed: {workers}"
        # Two workers on the embedded catalog share its one write lock: the worker says so, once.
        said = [w.log.read_text(errors="replace").count("share the embedded SQLite catalog") for w in env.workers]
        assert max(said) == 1 and sum(said) >= 1, said
    finally:
        env.close()
