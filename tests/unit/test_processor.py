"""IngressProcessor: registry outages are waited out, never turned into rejects."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from k2.avro.codec import encode
from k2.avro.registry import WriterSchema
from k2.avro.schemas import CONTRACTS
from k2.buffer.chunks import ChunkKey
from k2.buffer.store import ChunkStore
from k2.errors import RegistryUnavailable, UnknownSchemaId
from k2.ingest.frames import RawRecord
from k2.ingest.processor import IngressProcessor, LakeSchemas
from k2.lake.arrow import arrow_schema
from k2.lake.schemas import TABLES
from k2.lake.state import LakeState
from k2.metrics import K2Metrics
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.ingest_helpers import process, sent_reject, source
from tests.unit.lake_helpers import T0, trade

TOPIC = "market.trades.raw"
SUBJECT = "market.trades.raw-value"


class FlakyRegistry:
    """Answers like WriterSchemaCache.check_subject, after ``failures`` outages."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def check_subject(self, schema_id: int, subject: str) -> WriterSchema:
        self.calls += 1
        if self.calls <= self.failures:
            raise RegistryUnavailable("connection refused")
        if schema_id != 1:
            raise UnknownSchemaId(f"schema id {schema_id} is not in the registry")
        c = CONTRACTS["trade"]
        return WriterSchema(schema_id=1, schema_str=c.schema_str, parsed=c.parsed, versions=None)


def make(registry: Any) -> tuple[IngressProcessor, RecordingTable, list[Any], K2Metrics]:
    table = RecordingTable()
    sent: list[Any] = []
    metrics = K2Metrics(CollectorRegistry())

    async def send_reject(record: Any, reject: Any) -> asyncio.Future[None]:
        return await sent_reject(sent, record, reject)

    lake = LakeSchemas(LakeState, lambda name: arrow_schema(name), lambda name, writer: False)
    proc = IngressProcessor(
        source(TOPIC),
        ChunkStore(table, TOPIC),
        registry,
        lake,
        send_reject,
        metrics,
        "w:1",
        clock=lambda: (T0 + 1000) / 1000,
        max_retry_delay_s=0.01,
    )
    return proc, table, sent, metrics


def rec(offset: int, value: bytes, partition: int = 0) -> RawRecord:
    return RawRecord(partition, offset, b"BHP", value, T0)


async def test_registry_outage_delays_but_rejects_nothing() -> None:
    registry = FlakyRegistry(failures=3)
    proc, table, sent, metrics = make(registry)
    good = encode(1, CONTRACTS["trade"].parsed, trade())
    assert await process(proc, [rec(0, good), rec(1, good)]) == 2
    assert sent == []
    assert metrics.registry.get_sample_value("k2_schema_registry_retries_total") == 3
    [key] = [ChunkKey.decode(k) for k in table.data]
    assert (key.kind, key.first_offset, key.last_offset, key.rows) == ("rows", 0, 1, 2)


async def test_batch_builds_one_chunk_per_partition_and_kind() -> None:
    proc, table, sent, metrics = make(FlakyRegistry(failures=0))
    parsed = CONTRACTS["trade"].parsed
    batch = [
        rec(0, encode(1, parsed, trade())),
        rec(5, encode(1, parsed, trade()), partition=2),
        rec(1, encode(1, parsed, trade(price=Decimal(0)))),
        rec(2, encode(7, parsed, trade())),
        rec(3, encode(1, parsed, trade())),
    ]
    assert await process(proc, batch) == 3
    keys = sorted(ChunkKey.decode(k) for k in table.data)
    assert [(k.kind, k.partition, k.first_offset, k.last_offset, k.rows) for k in keys] == [
        ("rejects", 0, 1, 2, 2),
        ("rows", 0, 0, 3, 2),
        ("rows", 2, 5, 5, 1),
    ]
    assert len(table.changelog) == 3  # one changelog write per chunk, not per event
    assert [(r.offset, m.reason) for r, m in sent] == [(1, "invalid_value"), (2, "unknown_schema_id")]
    value = lambda name, **labels: metrics.registry.get_sample_value(name, labels)  # noqa: E731
    assert value("k2_events_consumed_total", topic=TOPIC) == 5
    assert value("k2_events_accepted_total", topic=TOPIC) == 3
    assert value("k2_events_rejected_total", topic=TOPIC, reason="invalid_value") == 1
    assert value("k2_events_rejected_total", topic=TOPIC, reason="unknown_schema_id") == 1
    chunk = pa.ipc.open_stream(table.data["rows:0:0:3:2"]).read_all()
    assert chunk["kafka_offset"].to_pylist() == [0, 3]


async def test_a_row_its_table_cannot_hold_is_a_reject_and_its_batch_lands() -> None:
    """One unrepresentable row (a value outside its column's type) must not sink its batch."""
    from dataclasses import replace

    from k2.lake.arrow import events_to_arrow
    from k2.lake.schemas import TRADES

    def picky(events: Any, now_ms: int, schema: Any) -> pa.Table:
        if any(e.offset == 2 for e in events):
            raise ValueError("column price: value does not fit decimal(18,6)")
        return events_to_arrow(TRADES, events, schema)

    proc, table, sent, _ = make(FlakyRegistry(failures=0))
    proc.source = replace(proc.source, to_arrow=picky)
    good = encode(1, CONTRACTS["trade"].parsed, trade())
    assert await process(proc, [rec(i, good) for i in range(5)]) == 4
    keys = sorted(ChunkKey.decode(k) for k in table.data)
    assert [(k.kind, k.first_offset, k.last_offset, k.rows) for k in keys] == [
        ("rejects", 2, 2, 1),
        ("rows", 0, 4, 4),
    ]
    rows = pa.ipc.open_stream(table.data["rows:0:0:4:4"]).read_all()
    assert rows["kafka_offset"].to_pylist() == [0, 1, 3, 4]
    [(reject, _)] = sent
    assert (reject.offset, reject.reason, reject.value, reject.schema_id) == (2, "invalid_value", good, 1)
    assert "does not fit its table" in reject.detail and "decimal(18,6)" in reject.detail


def test_rejects_are_chunked_by_the_bytes_they_carry() -> None:
    from k2.ingest.processor import _by_size
    from k2.lake.records import RejectRecord

    def r(offset: int, size: int) -> RejectRecord:
        return RejectRecord("t", 0, offset, "undecodable", "d", 0, None, None, b"x" * size)

    pieces = _by_size([r(0, 600), r(1, 600), r(2, 10), r(3, 5000), r(4, 1)], target=1300)
    assert [[x.offset for x in p] for p in pieces] == [[0], [1, 2], [3], [4]]
    assert _by_size([]) == []


async def test_a_table_recreated_while_following_a_new_schema_is_raised_not_retried_forever() -> None:
    """Found by the fault suite: scenario f stalled retrying a dropped and re-created table every 10 s."""
    from k2.ingest.frames import Frames
    from k2.lake.writer import TableRecreated

    def evolve(name: str, writer: Any) -> bool:
        raise TableRecreated("market_data.trades was dropped and created again under this worker")

    proc, *_ = make(FlakyRegistry(failures=0))
    proc.lake = LakeSchemas(LakeState, lambda name: arrow_schema(name), evolve)
    frames = Frames.from_records([rec(0, encode(1, CONTRACTS["trade"].parsed, trade()))])
    with pytest.raises(TableRecreated):
        await asyncio.wait_for(proc.prepare(frames), 5)


async def test_a_loaded_tables_schema_is_read_without_a_thread_or_the_catalog() -> None:
    state = LakeState()
    asked: list[str] = []

    def load(name: str) -> pa.Schema:
        asked.append(name)
        state.of(name).table = SimpleNamespace(schema=lambda: TABLES[name].schema)  # type: ignore[assignment]
        return state.of(name).arrow_schema()

    lake = LakeSchemas(lambda: state, load, lambda name, writer: False)
    first = await lake.arrow_schema("market_data.trades")
    again = await lake.arrow_schema("market_data.trades")
    assert asked == ["market_data.trades"]  # loaded once (in a thread), then read from the loaded table
    assert again is first and again.equals(arrow_schema("market_data.trades"))
