"""`k2 replay` against the local stack: exact counts, keys, sequence numbers, decodable values.

Each test module run uses its own topics and subjects (unique suffix), created here with
AdminClient and :func:`k2.avro.registry.register_contracts`, so runs never interfere.
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2.avro.codec import decode, split_frame
from k2.avro.registry import WriterSchemaCache, register_contracts, registry_client
from k2.avro.schemas import CONTRACTS
from k2.cli import replay as replay_cli
from k2.errors import WrongSubject
from k2.settings import Settings, get_settings

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
ROWS = {"trades": {"MWR": 11, "BHP": 2000, "DVN": 232}, "quotes": {"MWR": 60, "BHP": 2000, "DVN": 549}}
REFERENCE_ROWS = 4


def _topic_env(prefix: str) -> dict[str, str]:
    return {
        "K2_TRADES_TOPIC": f"{prefix}.trades",
        "K2_QUOTES_TOPIC": f"{prefix}.quotes",
        "K2_REFERENCE_TOPIC": f"{prefix}.reference",
        "K2_REJECTS_TOPIC": f"{prefix}.rejects",
    }


def _create_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    new = [
        NewTopic(settings.trades_topic, 3, 1),
        NewTopic(settings.quotes_topic, 3, 1),
        NewTopic(settings.reference_topic, 1, 1, config={"cleanup.policy": "compact"}),
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result()


def _cleanup(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.delete_topics(list(settings.source_topics), operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result()
    client = registry_client(settings)
    for contract in CONTRACTS.values():
        for permanent in (False, True):
            with contextlib.suppress(Exception):
                client.delete_subject(contract.subject(settings), permanent=permanent)


@pytest.fixture
def env_settings(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Settings]]:
    """Point K2_* settings at the stack and topics at ``prefix``; returns the settings the CLI will read."""

    def apply(prefix: str) -> Settings:
        monkeypatch.setenv("K2_KAFKA_BOOTSTRAP_SERVERS", stack.kafka_bootstrap)
        monkeypatch.setenv("K2_SCHEMA_REGISTRY_URL", stack.schema_registry_url)
        for key, value in _topic_env(prefix).items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()


@pytest.fixture
def initialised(env_settings: Callable[[str], Settings]) -> Iterator[Settings]:
    """Fresh topics and registered contracts, as `k2 init` would leave them."""
    settings = env_settings(f"it-replay-{uuid.uuid4().hex[:10]}")
    _create_topics(settings)
    register_contracts(registry_client(settings), settings)
    yield settings
    _cleanup(settings)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="k2")
    replay_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["replay", *argv])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def topic_size(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "k2-it-size"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        total = 0
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def read_all(settings: Settings, topic: str, expected: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record, in partition order."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"k2-it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[int, bytes, bytes]] = []
    try:
        consumer.subscribe([topic])
        idle = 0
        while len(out) < expected and idle < 30:
            batch = consumer.consume(10_000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for msg in batch:
                assert msg.error() is None, msg.error()
                out.append((msg.partition() or 0, msg.key() or b"", msg.value() or b""))
    finally:
        consumer.close()
    return out


def test_replay_sample_puts_every_row_on_its_topic(initialised: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings = initialised
    assert run_cli(str(SAMPLE), "--no-progress") == 0
    summary = capsys.readouterr().out
    assert f"{settings.trades_topic}: {sum(ROWS['trades'].values())} delivered" in summary
    assert "malformed lines: 0" in summary

    expected = {
        settings.reference_topic: REFERENCE_ROWS,
        settings.trades_topic: sum(ROWS["trades"].values()),
        settings.quotes_topic: sum(ROWS["quotes"].values()),
    }
    assert {topic: topic_size(settings, topic) for topic in expected} == expected

    registry = registry_client(settings)
    ids = {
        name: registry.lookup_schema(c.subject(settings), _schema(c.schema_str)).schema_id
        for name, c in CONTRACTS.items()
    }

    references = read_all(settings, settings.reference_topic, REFERENCE_ROWS)
    by_key = {}
    for _, key, value in references:
        schema_id, body = split_frame(value)
        assert schema_id == ids["reference_data"]
        record = decode(body, CONTRACTS["reference_data"].parsed)
        assert key == str(record["company_id"]).encode()
        by_key[key] = record
    assert sorted(by_key) == [b"3153", b"7078", b"7181", b"7458"]

    for kind, name, topic in (("trades", "trade", settings.trades_topic), ("quotes", "quote", settings.quotes_topic)):
        records = read_all(settings, topic, expected[topic])
        assert len(records) == expected[topic]
        sequences: dict[str, list[int]] = defaultdict(list)
        partitions: dict[str, set[int]] = defaultdict(set)
        for partition, key, value in records:
            schema_id, body = split_frame(value)
            assert schema_id == ids[name]
            record = decode(body, CONTRACTS[name].parsed)
            assert key == record["symbol"].encode()
            assert record["exchange"] == "ASX"
            sequences[record["symbol"]].append(record["sequence_number"])
            partitions[record["symbol"]].add(partition)
        assert Counter({s: len(v) for s, v in sequences.items()}) == Counter(ROWS[kind])
        for symbol, seqs in sequences.items():
            assert len(partitions[symbol]) == 1, "one key, one partition"
            assert seqs == list(range(1, ROWS[kind][symbol] + 1)), f"{kind} {symbol} in order, no gaps"


def _schema(text: str) -> Any:
    from confluent_kafka.schema_registry import Schema

    return Schema(text, "AVRO")


def test_loop_continues_sequences_and_moves_time(initialised: Settings) -> None:
    settings = initialised
    assert run_cli(str(SAMPLE), "--no-progress", "--symbols", "MWR", "--loop", "3") == 0
    trades = read_all(settings, settings.trades_topic, 3 * 11)
    assert len(trades) == 33
    records = [decode(split_frame(v)[1], CONTRACTS["trade"].parsed) for _, _, v in trades]
    assert [r["sequence_number"] for r in records] == list(range(1, 34))
    times = [r["exchange_timestamp"] for r in records]
    assert all(b > a for a, b in zip(times[10:30:11], times[11:31:11], strict=True))
    assert times == sorted(times)
    assert topic_size(settings, settings.reference_topic) == 1


def test_rate_limits_the_replay(initialised: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(SAMPLE), "--no-progress", "--symbols", "MWR", "--rate", "50") == 0
    summary = capsys.readouterr().out
    elapsed = float(summary.rsplit(" records in ", 1)[1].split(" s ", 1)[0])
    assert 1.0 <= elapsed < 5.0  # 72 records at 50/s, the first 5 free: about 1.3 s


async def test_writer_schema_cache_against_the_registry(initialised: Settings) -> None:
    settings = initialised
    registry = registry_client(settings)
    trade_subject = CONTRACTS["trade"].subject(settings)
    quote_subject = CONTRACTS["quote"].subject(settings)
    trade_id = registry.lookup_schema(trade_subject, _schema(CONTRACTS["trade"].schema_str)).schema_id
    quote_id = registry.lookup_schema(quote_subject, _schema(CONTRACTS["quote"].schema_str)).schema_id
    cache = WriterSchemaCache.from_settings(settings)
    try:
        writer = await cache.check_subject(trade_id, trade_subject)
        assert writer.parsed["name"] == "com.k2.market_data.Trade"
        if writer.versions is not None:
            assert writer.version_in(trade_subject) == 1
        with pytest.raises(WrongSubject):
            await cache.check_subject(quote_id, trade_subject)
    finally:
        await cache.aclose()


def test_register_contracts_is_idempotent_and_backward(initialised: Settings) -> None:
    settings = initialised
    client = registry_client(settings)
    again = register_contracts(client, settings)
    assert {r.status for r in again} == {"exists"}
    for registration in again:
        assert client.get_compatibility(registration.subject) == "BACKWARD"


def test_replay_before_init_says_run_init(
    env_settings: Callable[[str], Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = env_settings(f"it-noinit-{uuid.uuid4().hex[:10]}")
    assert run_cli(str(SAMPLE), "--no-progress") == 2
    assert "run `k2 init` first" in capsys.readouterr().err
    _create_topics(settings)
    try:
        assert run_cli(str(SAMPLE), "--no-progress") == 2
        err = capsys.readouterr().err
        assert "is not registered under" in err and "run `k2 init` first" in err
    finally:
        _cleanup(settings)
