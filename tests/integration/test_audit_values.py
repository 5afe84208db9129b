"""``k2 audit --values`` on a lake a real worker landed: equal when untouched, and each difference planted
with pyiceberg named by table, column, offset range and both values, with exit 1.

The worker lands two instruments of the sample with injected gaps and duplicates, trades of a
v2 writer schema (an optional ``trade_id``, on every other one) and junk records with headers
(rejects). Then the lake is edited behind K2's back: a price one tick off, a timestamp an hour
late, a ``trade_id`` nulled, one header byte of a reject changed; and at last the evolved
column dropped from the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from k2.audit.values_report import show
from k2.avro.codec import encode, parse_schema
from k2.avro.registry import registry_client
from k2.avro.schemas import CONTRACTS
from k2.lake.schemas import REJECTS, SEQUENCE_GAPS, TRADES
from tests.integration.conftest import Stack
from tests.integration.k2env import K2Env

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
NOW_MS = 1_394_406_000_000  # 2014-03-09T23:00:00Z
V2_TRADES = 20
JUNK = 5


def _v2_trade(i: int) -> dict[str, Any]:
    return {
        "symbol": "XYZ", "company_id": 9, "exchange": "ASX", "exchange_timestamp": NOW_MS + i,
        "price": Decimal("12.345678") + i, "volume": 100 + i, "qualifiers": 0, "venue": "", "buyer_id": None,
        "ingestion_timestamp": NOW_MS, "sequence_number": i + 1, "trade_id": f"T-{i}" if i % 2 else None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def env(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[K2Env]:
    e = K2Env(stack, tmp_path_factory.mktemp("values"), "sqlite")
    e.k2("init")
    e.start_worker()
    e.k2(
        "replay", str(SAMPLE), "--symbols", "BHP,MWR", "--inject-gaps", "3", "--inject-duplicates", "2", "--no-progress"
    )
    s = e.settings
    tree = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None})
    v2_id = registry_client(s).register_schema(CONTRACTS["trade"].subject(s), Schema(json.dumps(tree), "AVRO"))
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "enable.idempotence": True})
    for i in range(V2_TRADES):
        producer.produce(s.trades_topic, key=b"XYZ", value=encode(v2_id, parse_schema(tree), _v2_trade(i)))
    for i in range(JUNK):
        headers: list[tuple[str, str | bytes | None]] = [("trace", b"t%d" % i), ("origin", b"\x00\x01")]
        producer.produce(s.trades_topic, key=b"junk", value=b"junk-%d" % i, headers=headers)
    assert producer.flush(30) == 0
    e.wait_landed()
    e.close()  # the lake stands still while it is edited
    yield e


def _audit(env: K2Env, *args: str) -> tuple[int, dict[str, Any]]:
    proc = env.k2("audit", "--values", "--json", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


def _mismatches(report: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(m["table"], m["column"], m["partition"]): m for m in report["values"]["mismatches"]}


def _consecutive(rows: pa.Table, candidates: pa.Array, n: int, skip: int) -> pa.Array:
    """``n`` row indices among ``candidates`` (ascending offsets) after the first ``skip``, at consecutive offsets."""
    offsets = rows["kafka_offset"].take(candidates).to_pylist()
    for i in range(skip, len(offsets) - n + 1):
        if offsets[i + n - 1] - offsets[i] == n - 1:
            return candidates[i : i + n]
    raise AssertionError(f"no {n} consecutive offsets")


def _edit(rows: pa.Table, name: str, where: pa.Array, change: Any) -> pa.Table:
    """``rows`` with ``change(value)`` in column ``name`` at the row indices ``where`` (the field kept as it was)."""
    values = rows[name].to_pylist()
    for i in where.to_pylist():
        values[i] = change(values[i])
    field = rows.schema.field(name)
    return rows.set_column(rows.schema.get_field_index(name), field, pa.array(values, field.type))


def test_values_equal_then_each_planted_difference_is_named(env: K2Env) -> None:
    code, report = _audit(env)
    values = report["values"]
    assert code == 0 and values["ok"], json.dumps(values, indent=1)[:4000]
    assert values["compared"][TRADES] > 1000 and values["compared"][REJECTS] >= JUNK + 2
    assert values["compared"][SEQUENCE_GAPS] >= 3
    code, sampled = _audit(env, "--sample", "0.5", "--seed", "1")
    assert code == 0 and sampled["values"]["sample"]["fraction"] == 0.5

    catalog = env.catalog()
    trades = catalog.load_table(TRADES)
    rows = trades.scan().to_arrow().sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    xyz = pc.equal(rows["symbol"], "XYZ")
    xyz_partition = rows["kafka_partition"].filter(xyz)[0].as_py()
    sample_rows = rows["kafka_partition"].filter(pc.invert(xyz))
    partition = pc.mode(sample_rows)[0]["mode"].as_py()  # the partition holding most of the sample's trades
    idx = pa.array(range(rows.num_rows))
    mine = idx.filter(pc.and_(pc.equal(rows["kafka_partition"], partition), pc.invert(xyz)))
    tick, hour = _consecutive(rows, mine, 3, 10), _consecutive(rows, mine, 2, 40)
    with_id = idx.filter(pc.and_(xyz, pc.is_valid(rows["trade_id"])))[0:1]
    off = rows["kafka_offset"]
    original = rows
    rows = _edit(rows, "price", tick, lambda p: p + Decimal("0.000001"))
    rows = _edit(rows, "exchange_timestamp", hour, lambda t: t + timedelta(hours=1))
    rows = _edit(rows, "trade_id", with_id, lambda _: None)
    trades.overwrite(rows)

    rejects = catalog.load_table(REJECTS)
    rejected = rejects.scan().to_arrow().sort_by("source_offset")
    junk = pc.equal(rejected["key"], b"junk")
    first_junk = pa.array(range(rejected.num_rows)).filter(junk)[0:1]
    rejects.overwrite(_edit(rejected, "headers", first_junk, lambda h: [h[0], {"key": "origin", "value": b"\x00\x02"}]))

    code, report = _audit(env)
    assert code == 1
    assert report["ok"], "the law still holds: only values were edited"
    found = _mismatches(report)
    assert set(found) == {
        (TRADES, "price", partition),
        (TRADES, "exchange_timestamp", partition),
        (TRADES, "trade_id", xyz_partition),
        (REJECTS, "headers", rejected["source_partition"][first_junk[0].as_py()].as_py()),
    }, found

    def check(column: str, at: pa.Array, rows_: int, where: int = partition) -> None:
        m = found[(TRADES, column, where)]
        (run,) = m["ranges"]
        offsets = off.take(at).to_pylist()
        assert (m["rows"], run["first"], run["last"]) == (rows_, offsets[0], offsets[-1])
        first = run["examples"][0]
        assert first["offset"] == offsets[0]
        assert first["source"] == show(original[column][at[0].as_py()].as_py())
        assert first["lake"] == show(rows[column][at[0].as_py()].as_py())

    check("price", tick, 3)
    check("exchange_timestamp", hour, 2)
    check("trade_id", with_id, 1, xyz_partition)
    price = found[(TRADES, "price", partition)]["ranges"][0]["examples"][0]
    assert Decimal(price["lake"]) - Decimal(price["source"]) == Decimal("0.000001")
    stamp = found[(TRADES, "exchange_timestamp", partition)]["ranges"][0]["examples"][0]
    assert stamp["lake"].endswith("Z") and stamp["source"].endswith("Z")
    header = found[(REJECTS, "headers", rejected["source_partition"][first_junk[0].as_py()].as_py())]
    example = header["ranges"][0]["examples"][0]
    assert "origin=2 bytes 0002" in example["lake"] and "origin=2 bytes 0001" in example["source"]

    trades.update_schema().delete_column("trade_id").commit()
    code, report = _audit(env)
    assert code == 1
    dropped = _mismatches(report)[(TRADES, "trade_id", xyz_partition)]
    assert dropped["rows"] == V2_TRADES // 2
    assert all(e["lake"] == "(no such column)" for r in dropped["ranges"] for e in r["examples"])
    assert {e["source"] for r in dropped["ranges"] for e in r["examples"]} <= {f"'T-{i}'" for i in range(V2_TRADES)}

    proc = env.k2("audit", "--values", check=False)
    assert proc.returncode == 1
    assert "differs  market_data.trades" in proc.stdout and "VALUES DIFFER" in proc.stdout
