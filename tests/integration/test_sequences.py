"""Market-data guarantees end to end: injected gaps and duplicates, restarts, reference data.

The bundled sample is replayed with ``--inject-gaps`` and ``--inject-duplicates``; the
replay's own report (``--injected-report``) says exactly which gaps K2 must list in
``market_data.sequence_gaps`` and which duplicates it must reject, and the worker's
``/metrics`` must agree. A worker stopped (SIGTERM) or killed (SIGKILL) mid-stream must
come back with its sequence state: no false gap, no lost or doubled gap row.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from k2.avro.codec import decode, encode, split_frame
from k2.avro.registry import lookup_schema_id, registry_client
from k2.avro.schemas import CONTRACTS
from tests.integration.k2env import ROOT, K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
TRADES, QUOTES = 2243, 2609


def reference_only(tmp: Path) -> Path:
    """A replay folder with the sample's reference data and no ticks."""
    folder = tmp / "reference-only"
    (folder / "reference-data").mkdir(parents=True)
    (folder / "trades").mkdir()
    (folder / "quotes").mkdir()
    shutil.copy(SAMPLE / "reference-data" / "company_info.csv", folder / "reference-data")
    return folder


def landed_gaps(env: K2Env) -> list[tuple[str, str, int, int, int, str]]:
    rows = env.catalog().load_table("market_data.sequence_gaps").scan().to_arrow().to_pylist()
    return sorted(
        (r["source_topic"], r["symbol"], r["expected"], r["received"], r["missing"], r["severity"]) for r in rows
    )


def expected_gaps(injected: dict[str, Any]) -> list[tuple[str, str, int, int, int, str]]:
    return sorted((g["topic"], g["symbol"], g["expected"], g["received"], 1, "small") for g in injected["gaps"])


def landed_duplicates(env: K2Env) -> list[tuple[str, str, int]]:
    """The rejected duplicates, decoded from their original bytes: (topic, symbol, sequence number)."""
    rows = env.catalog().load_table("market_data.rejects").scan().to_arrow().to_pylist()
    out = []
    for r in rows:
        if r["reason"] != "duplicate":
            continue
        name = "trade" if r["source_topic"] == env.settings.trades_topic else "quote"
        record = decode(split_frame(r["value"])[1], CONTRACTS[name].parsed)
        out.append((r["source_topic"], record["symbol"], record["sequence_number"]))
    return sorted(out)


def expected_duplicates(injected: dict[str, Any]) -> list[tuple[str, str, int]]:
    return sorted((d["topic"], d["symbol"], d["sequence_number"]) for d in injected["duplicates"])


def rows(env: K2Env, table: str) -> int:
    return env.catalog().load_table(table).scan(selected_fields=("kafka_offset",)).to_arrow().num_rows


@pytest.fixture
def env(stack: Any, tmp_path: Path) -> Iterator[K2Env]:
    e = K2Env(stack, tmp_path, "sqlite", K2_FLUSH_MAX_ROWS="1000")
    e.k2("init")
    yield e
    e.close()


def test_injected_gaps_and_duplicates_land_exactly_and_the_metrics_agree(env: K2Env, tmp_path: Path) -> None:
    env.start_worker()
    # Reference data first, so no tick of the sample is ever seen with an unknown symbol.
    env.k2("replay", str(reference_only(tmp_path)), "--no-progress")
    env.wait_landed()
    report = tmp_path / "injected.json"
    out = env.k2(
        "replay", str(SAMPLE), "--no-progress", "--inject-gaps", "9", "--inject-duplicates", "7",
        "--seed", "2024", "--injected-report", str(report),
    ).stdout  # fmt: skip
    assert "injected: 9 gap(s), 7 duplicate(s)" in out
    injected = json.loads(report.read_text())
    # A tick of an unknown symbol, and one whose company_id contradicts the reference data (no sequence number).
    s = env.settings
    schema_id = lookup_schema_id(registry_client(s), CONTRACTS["trade"].subject(s), CONTRACTS["trade"].schema_str)
    assert schema_id is not None
    base = {
        "company_id": 7078, "exchange": "ASX", "exchange_timestamp": 1_394_406_000_000, "price": Decimal(1),
        "volume": 1, "qualifiers": 0, "venue": "", "buyer_id": None, "ingestion_timestamp": 1_394_406_000_000,
    }  # fmt: skip
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
    for symbol, company_id in (("ZZZ", 4242), ("BHP", 9999)):
        record = {**base, "symbol": symbol, "company_id": company_id, "sequence_number": None}
        producer.produce(
            s.trades_topic, key=symbol.encode(), value=encode(schema_id, CONTRACTS["trade"].parsed, record)
        )
    assert producer.flush(30) == 0
    env.wait_landed()

    assert landed_gaps(env) == expected_gaps(injected)
    assert landed_duplicates(env) == expected_duplicates(injected)
    dropped = Counter(g["topic"] for g in injected["gaps"])
    assert rows(env, "market_data.trades") == TRADES - dropped[s.trades_topic] + 2
    assert rows(env, "market_data.quotes") == QUOTES - dropped[s.quotes_topic]
    assert_law(env)

    # The worker's own metrics say the same.
    assert env.metric("k2_sequence_gaps_total", severity="small") == len(injected["gaps"])
    assert env.metric("k2_sequence_gaps_total", severity="large") == 0
    assert env.metric("k2_sequence_missing_total") == len(injected["gaps"])
    assert env.metric("k2_sequence_events_total", outcome="duplicate") == len(injected["duplicates"])
    assert env.metric("k2_events_rejected_total", reason="duplicate") == len(injected["duplicates"])
    assert env.metric("k2_sequence_events_total", outcome="conflict") == 0
    assert env.metric("k2_sequence_events_total", outcome="untracked") == 2
    assert env.metric("k2_sequence_events_total", outcome="redelivered") == 0
    assert env.metric("k2_unknown_instrument_events_total", symbol="ZZZ") == 1
    assert env.metric("k2_unknown_instrument_events_total") == 1
    assert env.metric("k2_instrument_mismatch_events_total", symbol="BHP") == 1

    view = json.loads(env.get("/k2/instruments"))
    assert sorted(c["symbol"] for c in view["known"]) == ["BHP", "DVN", "MWR", "RIO"]
    assert view["unknown_symbols"] == [{"symbol": "ZZZ", "events": {s.trades_topic: 1}, "known_now": False}]
    assert view["company_mismatches"] == [
        {"symbol": "BHP", "company_id": 9999, "reference_company_ids": [7078], "topic": s.trades_topic, "events": 1}
    ]


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_restart_mid_stream_continues_the_sequence_state(stack: Any, tmp_path: Path, stop: str) -> None:
    # Flushes by the timer only: a size-triggered flush request pending when SIGTERM comes
    # blocks the worker's shutdown (faust suspends the flush channel's flow control first).
    env = K2Env(stack, tmp_path, "sqlite")
    env.k2("init")
    try:
        restart_mid_stream(env, tmp_path, stop)
    finally:
        env.close()


def restart_mid_stream(env: K2Env, tmp_path: Path, stop: str) -> None:
    worker = env.start_worker()
    report = tmp_path / "injected.json"
    replay = env.replay_in_background(
        str(SAMPLE), "--loop", "4", "--rate", "2500",
        "--inject-gaps", "12", "--inject-duplicates", "10", "--seed", "77", "--injected-report", str(report),
    )  # fmt: skip
    env.wait_first_commit()
    time.sleep(1.0)  # past the first commit: sequence state and buffers both hold something
    if stop == "sigterm":
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(60)
    else:
        worker.crash()
    landed_before = sum(n + 1 for n in env.landed().values())
    env.start_worker()
    assert replay.wait(300) == 0
    env.wait_landed(timeout_s=180)
    print(
        "REDELIVERED",
        env.metric("k2_sequence_events_total", outcome="redelivered"),
        env.metric("k2_sequence_events_total", outcome="unresolved"),
    )
    assert 0 < landed_before < 4 * (TRADES + QUOTES), "the stop should come mid-stream"
    injected = json.loads(report.read_text())
    assert landed_gaps(env) == expected_gaps(injected), "no false gap after the restart, none lost or doubled"
    assert landed_duplicates(env) == expected_duplicates(injected)
    dropped = Counter(g["topic"] for g in injected["gaps"])
    assert rows(env, "market_data.trades") == 4 * TRADES - dropped[env.settings.trades_topic]
    assert rows(env, "market_data.quotes") == 4 * QUOTES - dropped[env.settings.quotes_topic]
    assert_law(env)
    # The reference data came back with the worker (its global table, restored from the changelog).
    known = json.loads(env.get("/k2/instruments"))["known"]
    assert sorted(c["symbol"] for c in known) == ["BHP", "DVN", "MWR", "RIO"]
