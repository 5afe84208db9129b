"""The market-data stages in the ingress processor, and the gaps they buffer flushed to Iceberg exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from k2.avro.codec import encode
from k2.avro.registry import WriterSchema
from k2.avro.schemas import CONTRACTS
from k2.buffer.chunks import ChunkKey
from k2.buffer.store import ChunkStore
from k2.ingest.frames import JOINED, Frames, RawRecord
from k2.ingest.processor import IngressProcessor, LakeSchemas, Taken
from k2.lake.arrow import arrow_schema, companies_to_arrow, events_to_arrow
from k2.lake.records import BufferedEvent
from k2.lake.schemas import SEQUENCE_GAPS, TRADES
from k2.lake.state import LakeState
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter
from k2.metrics import K2Metrics
from k2.models import ReferenceData
from k2.reference import instruments as instruments_module
from k2.reference.instruments import (
    OTHER_LABEL,
    InstrumentCheck,
    Instruments,
    InstrumentWatch,
    ReferenceUpdate,
    check_batch,
    instruments_payload,
    latest_by_company,
)
from k2.sequence.stage import SequenceStage
from k2.sink.flusher import Flusher, SourceBuffer
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.ingest_helpers import process, sent_reject, source
from tests.unit.lake_helpers import T0, TOPICS, TRADES_TOPIC, sqlite_catalog, trade

SUBJECT = f"{TRADES_TOPIC}-value"
PARSED = CONTRACTS["trade"].parsed


class Registry:
    async def check_subject(self, schema_id: int, subject: str) -> WriterSchema:
        return WriterSchema(schema_id=1, schema_str=CONTRACTS["trade"].schema_str, parsed=PARSED, versions=None)


class Harness:
    def __init__(self, window: int = 1000) -> None:
        self.buffer = RecordingTable()
        self.sequences = RecordingTable()
        self.sent: list[Any] = []
        self.metrics = K2Metrics(CollectorRegistry())
        self.stage = SequenceStage(TRADES_TOPIC, self.sequences, window, self.metrics, "w:1")

        async def send_reject(record: Any, reject: Any) -> asyncio.Future[None]:
            return await sent_reject(self.sent, record, reject)

        self.proc = IngressProcessor(
            source(TRADES_TOPIC),
            ChunkStore(self.buffer, TRADES_TOPIC),
            Registry(),  # type: ignore[arg-type]
            LakeSchemas(LakeState, arrow_schema, lambda name, writer: False),
            send_reject,
            self.metrics,
            "w:1",
            clock=lambda: (T0 + 1000) / 1000,
            stages=[self.stage],
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def chunk(self, kind: str) -> pa.Table:
        [key] = [k for k in self.buffer.data if k.startswith(kind)]
        return pa.ipc.open_stream(self.buffer.data[key]).read_all()


def taken(rows: pa.Table, partition: int = 0) -> Taken:
    """A batch as the stages receive it (rows already built; no frames needed by these stages)."""
    return Taken(Frames(partition, [], [], [], []), rows)


def rec(offset: int, seq: int, partition: int = 0, **kw: Any) -> RawRecord:
    value = encode(1, PARSED, trade(sequence_number=seq, **kw))
    return RawRecord(partition, offset, b"BHP", value, T0)


async def test_duplicates_go_to_rejects_with_their_bytes_and_gaps_to_a_chunk() -> None:
    h = Harness()
    batch = [
        rec(0, 1),
        rec(1, 2),
        rec(2, 5),  # gap: 3, 4
        rec(3, 2, ingestion_timestamp=T0 + 777),  # duplicate of offset 1
        rec(4, 6, price=Decimal("1.5")),
        rec(5, 6),  # conflict with offset 4
        rec(6, 7, price=Decimal(0)),  # invalid: rejected before sequence tracking sees it
    ]
    assert await process(h.proc, batch) == 4
    keys = sorted(ChunkKey.decode(k) for k in h.buffer.data)
    assert [(k.kind, k.first_offset, k.last_offset, k.rows) for k in keys] == [
        ("gaps", 2, 2, 1),
        ("rejects", 3, 6, 3),
        ("rows", 0, 4, 4),
    ]
    assert h.chunk("rows")["kafka_offset"].to_pylist() == [0, 1, 2, 4]
    rejects = h.chunk("rejects").to_pylist()
    assert [(r["source_offset"], r["reason"]) for r in rejects] == [
        (3, "duplicate"),
        (5, "sequence_conflict"),
        (6, "invalid_value"),
    ]
    assert rejects[0]["value"] == batch[3].value and rejects[0]["key"] == b"BHP" and rejects[0]["schema_id"] == 1
    assert "offset 1" in rejects[0]["detail"]
    assert [(r.offset, m.reason) for r, m in h.sent] == [
        (3, "duplicate"),
        (5, "sequence_conflict"),
        (6, "invalid_value"),
    ]
    gap = h.chunk("gaps").to_pylist()[0]
    assert (gap["expected"], gap["received"], gap["missing"], gap["severity"], gap["source_offset"]) == (
        3,
        5,
        2,
        "small",
        2,
    )
    assert gap["source_topic"] == TRADES_TOPIC and gap["symbol"] == "BHP"
    # Sequence state: one write per key (a block, then the head), to the source partition.
    assert [(p, k) for p, k, _ in h.sequences.changelog] == [(0, "w|0|ASX|BHP|0|0"), (0, "h|0|ASX|BHP")]
    assert h.metric("k2_sequence_events_total", topic=TRADES_TOPIC, outcome="duplicate") == 1
    assert h.metric("k2_sequence_events_total", topic=TRADES_TOPIC, outcome="conflict") == 1
    assert h.metric("k2_sequence_gaps_total", topic=TRADES_TOPIC, severity="small") == 1
    assert h.metric("k2_sequence_missing_total", topic=TRADES_TOPIC, severity="small") == 2
    assert h.metric("k2_events_rejected_total", topic=TRADES_TOPIC, reason="duplicate") == 1
    assert h.metric("k2_events_accepted_total", topic=TRADES_TOPIC) == 4


async def test_redelivered_batch_rebuilds_the_same_chunks_and_counts_nothing_twice() -> None:
    h = Harness()
    batch = [rec(0, 1), rec(1, 3), rec(2, 3), rec(3, 4)]
    await process(h.proc, batch)
    first = {k: pa.ipc.open_stream(v).read_all() for k, v in h.buffer.data.items()}
    # A new worker restores the sequence state (it got ahead of the consumer group) and the batch comes again.
    h2 = Harness()
    h2.sequences.data.update(h.sequences.restore_from_changelog())
    await process(h2.proc, batch)
    again = {k: pa.ipc.open_stream(v).read_all() for k, v in h2.buffer.data.items()}
    assert again.keys() == first.keys()
    for key in first:
        assert (
            again[key]
            .drop_columns(["detected_at"] if key.startswith("gaps") else [])
            .equals(first[key].drop_columns(["detected_at"] if key.startswith("gaps") else []))
        ), key
    assert h2.metric("k2_sequence_events_total", topic=TRADES_TOPIC, outcome="redelivered") == 4
    assert h2.metric("k2_sequence_gaps_total", topic=TRADES_TOPIC, severity="small") == 0


async def test_events_without_sequence_numbers_are_landed_untracked() -> None:
    h = Harness()
    assert await process(h.proc, [rec(0, None), rec(1, None)]) == 2  # type: ignore[arg-type]
    assert h.metric("k2_sequence_events_total", topic=TRADES_TOPIC, outcome="untracked") == 2
    assert h.sequences.changelog == []


def test_gap_chunks_flush_to_their_table_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness()
        await process(h.proc, [rec(0, 1), rec(1, 4), rec(2, 5), rec(3, 20)])
        catalog = sqlite_catalog(tmp_path)
        ensure_tables(catalog)
        writer = IcebergWriter(catalog, TOPICS, "test:1")
        store = ChunkStore(h.buffer, TRADES_TOPIC)
        flusher = Flusher([SourceBuffer(TRADES_TOPIC, (TRADES,), store)], lambda: writer, h.metrics)
        assert flusher.buffered_rows()[SEQUENCE_GAPS] == 2
        gaps_chunk = {k: v for k, v in h.buffer.data.items() if k.startswith("gaps")}
        await flusher.flush({(TRADES_TOPIC, 0): 4})
        # A crash between the commit and the tombstones: the chunk comes back and is flushed again.
        h.buffer.data.update(gaps_chunk)
        report = await flusher.flush({(TRADES_TOPIC, 0): 4})
        assert [(r.table_name, r.rows_written, r.rows_dropped) for r in report.results] == [(SEQUENCE_GAPS, 0, 2)]
        rows = writer.table(SEQUENCE_GAPS, refresh=True).scan().to_arrow().to_pylist()
        assert sorted((r["expected"], r["received"], r["severity"]) for r in rows) == [
            (2, 4, "small"),
            (6, 20, "large"),
        ]

    asyncio.run(scenario())


# -- reference data ------------------------------------------------------------------------------


def ref(company_id: int, symbol: str, **kw: Any) -> dict[str, Any]:
    return {
        "company_id": company_id,
        "symbol": symbol,
        "company_name": f"{symbol} Ltd",
        "isin": f"AU{company_id}",
        "start_date": "2001-01-01",
        "end_date": None,
        **kw,
    }


def ev(offset: int, record: dict[str, Any], partition: int = 0) -> BufferedEvent:
    return BufferedEvent("t", partition, offset, record)


async def test_reference_update_writes_the_last_version_of_each_company_once() -> None:
    table = RecordingTable()
    instruments = Instruments(table.data)
    metrics = K2Metrics(CollectorRegistry())
    stage = ReferenceUpdate(table, instruments, metrics)
    assert instruments.by_symbol() == {}
    batch = taken(
        companies_to_arrow([ev(0, ref(1, "AAA")), ev(1, ref(2, "BBB")), ev(2, ref(1, "AAX"))], T0, sort=False)
    )
    assert stage(batch, T0) == []
    assert table.changelog == []  # nothing is sent before persist()
    assert await stage.persist(1) == []  # another partition's: nothing
    await stage.persist(0)
    assert [(p, k) for p, k, _ in table.changelog] == [(0, "1"), (0, "2")]
    assert isinstance(table.changelog[0][2], ReferenceData)
    assert instruments.by_symbol() == {"AAX": {1}, "BBB": {2}}
    assert metrics.registry.get_sample_value("k2_reference_companies") == 2
    assert latest_by_company(companies_to_arrow([ev(0, ref(3, "C", end_date="2020-02-29"))], T0, sort=False)) == {
        "3": ref(3, "C", end_date="2020-02-29")
    }
    # A fetch's partitions joined: each company's last version goes to its own partition's changelog.
    joined = Taken(
        Frames(JOINED, [], [], [], []),
        companies_to_arrow([ev(5, ref(3, "CCC")), ev(9, ref(3, "CCD")), ev(2, ref(4, "DDD"), 2)], T0, sort=False),
    )
    assert stage(joined, T0) == []
    await stage.persist(2)
    await stage.persist(0)
    assert [(p, k, v.symbol) for p, k, v in table.changelog[2:]] == [(2, "4", "DDD"), (0, "3", "CCD")]


@pytest.mark.parametrize("small_batch", [instruments_module.SMALL_BATCH, 0])
def test_unknown_symbols_and_contradicting_company_ids_are_counted_not_rejected(
    small_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instruments_module, "SMALL_BATCH", small_batch)  # counted in Python, or by Arrow
    data = {"1": ReferenceData(**ref(1, "AAA")), "2": ref(2, "BBB"), "3": ref(3, "BBB")}  # BBB reused
    instruments = Instruments(data)
    events = [
        ev(0, trade(symbol="AAA", company_id=1)),
        ev(1, trade(symbol="ZZZ", company_id=9)),
        ev(2, trade(symbol="ZZZ", company_id=9)),
        ev(3, trade(symbol="AAA", company_id=2)),
        ev(4, trade(symbol="BBB", company_id=3)),
    ]
    rows = events_to_arrow(TRADES, events, sort=False)
    unknown, mismatched = check_batch(rows, instruments.by_symbol())
    assert unknown == {"ZZZ": 2} and mismatched == {("AAA", 2): 1}
    metrics = K2Metrics(CollectorRegistry())
    watch = InstrumentWatch(metrics)
    batch = taken(rows)
    assert InstrumentCheck("trades", instruments, watch)(batch, T0) == []
    assert batch.accepted == 5
    value = metrics.registry.get_sample_value
    assert value("k2_unknown_instrument_events_total", {"topic": "trades", "symbol": "ZZZ"}) == 2
    assert value("k2_instrument_mismatch_events_total", {"topic": "trades", "symbol": "AAA"}) == 1
    # The reference data arrives later: the view says so.
    data["9"] = ref(9, "ZZZ")
    instruments.changed()
    payload = instruments_payload(instruments, watch)
    assert [c["symbol"] for c in payload["known"]] == ["AAA", "BBB", "BBB", "ZZZ"]
    assert payload["unknown_symbols"] == [{"symbol": "ZZZ", "events": {"trades": 2}, "known_now": True}]
    assert payload["company_mismatches"] == [
        {"symbol": "AAA", "company_id": 2, "reference_company_ids": [1], "topic": "trades", "events": 1}
    ]


def test_per_symbol_metric_labels_are_bounded() -> None:
    metrics = K2Metrics(CollectorRegistry())
    watch = InstrumentWatch(metrics, label_limit=2)
    watch.add("t", Counter({"A": 1, "B": 1, "C": 5, "D": 1}), Counter())
    value = metrics.registry.get_sample_value
    assert value("k2_unknown_instrument_events_total", {"topic": "t", "symbol": OTHER_LABEL}) == 6
    assert watch.unknown[("t", "C")] == 5  # the view keeps every symbol


def _fetch_of_three_partitions() -> list[RawRecord]:
    """One live fetch: three partitions of tens of records each, with gaps, duplicates, conflicts and rejects."""
    out: list[RawRecord] = []
    for partition in range(3):
        symbols = [f"S{k}" for k in range(4)]  # the same symbols in every partition: a key is per partition
        seq = dict.fromkeys(symbols, 100)
        for offset in range(60):
            symbol = symbols[offset % 4]
            seq[symbol] += 3 if offset % 17 == 5 else 1  # now and then a gap
            number = seq[symbol] - 1 if offset % 13 == 7 else seq[symbol]  # and a duplicate or a conflict
            volume = 7 if offset % 26 == 7 else 100
            value = encode(1, PARSED, trade(symbol=symbol, sequence_number=number, volume=volume))
            if offset % 23 == 11:
                value = b"\x01" + value[1:]  # not Confluent-framed
            elif offset % 29 == 3:
                value = encode(1, PARSED, trade(symbol=symbol, sequence_number=number, price=Decimal(0)))
            out.append(RawRecord(partition, 1000 * partition + offset, symbol.encode(), value, T0 + offset))
    return out


@pytest.mark.parametrize("grouping", ["python", "arrow"])
async def test_a_fetchs_partitions_written_joined_write_what_each_batch_alone_writes(
    grouping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: a live fetch's partitions are classified and tracked in one block, then written per partition.

    Alone, each batch of 60 goes record by record (below MIN_PROVED_BATCH); joined, 180 take the
    batch path. Every chunk, every state write, every reject and every count must be the same,
    and each partition's deliveries its own.
    """
    from k2.ingest.fast import MIN_PROVED_BATCH
    from k2.sequence import track as track_module

    if grouping == "arrow":  # keys grouped by Arrow at any size (a live block is grouped in Python)
        monkeypatch.setattr(track_module, "SMALL_BATCH", 0)

    records = _fetch_of_three_partitions()
    parts = [Frames.from_records([r for r in records if r.partition == p]) for p in range(3)]
    assert all(len(f) < MIN_PROVED_BATCH <= len(records) for f in parts)
    alone, joined = Harness(), Harness()
    futures_alone = []
    for frames in parts:
        writes = await alone.proc.write(frames, await alone.proc.prepare(frames))
        futures_alone.append(len(writes.futures))
    every = Frames.join(parts)
    written = await joined.proc.write_many(parts, await joined.proc.prepare(every))
    assert [len(w.futures) for w in written] == futures_alone
    # The same chunks in the same order (a slice of the block serializes to other bytes, the same rows).
    assert _decoded(joined.buffer.changelog) == _decoded(alone.buffer.changelog)
    assert joined.sequences.changelog == alone.sequences.changelog
    assert [(r, m) for r, m in joined.sent] == [(r, m) for r, m in alone.sent]
    reasons = Counter(m.reason for _, m in joined.sent)
    assert {"duplicate", "sequence_conflict", "not_confluent_framed", "invalid_value"} <= set(reasons), reasons
    assert any(k.startswith("gaps:") for k in joined.buffer.data)
    assert joined.metric("k2_events_batch_path_total", topic=TRADES_TOPIC) > 0
    assert alone.metric("k2_events_batch_path_total", topic=TRADES_TOPIC) == 0
    for name in ("k2_events_consumed_total", "k2_events_accepted_total"):
        assert joined.metric(name, topic=TRADES_TOPIC) == alone.metric(name, topic=TRADES_TOPIC) > 0
    for reason in reasons:
        labels = {"topic": TRADES_TOPIC, "reason": reason}
        assert joined.metric("k2_events_rejected_total", **labels) == alone.metric("k2_events_rejected_total", **labels)


def _decoded(changelog: list[tuple[int | None, str, bytes | None]]) -> list[tuple[int | None, str, Any]]:
    return [(p, k, None if v is None else pa.ipc.open_stream(v).read_all().to_pylist()) for p, k, v in changelog]


def test_joined_frames_know_each_records_partition() -> None:
    a = Frames.from_records([RawRecord(2, 5, b"k", b"v5", 1), RawRecord(2, 9, b"k", b"v9", 2)])
    b = Frames.from_records([RawRecord(4, 5, b"j", b"w5", 3, (("h", b"1"),))])
    joined = Frames.join([a, b])
    assert len(joined) == 3 and joined.partition_array().tolist() == [2, 2, 4]
    assert joined.at(4, 5) == RawRecord(4, 5, b"j", b"w5", 3, (("h", b"1"),))
    assert joined.at(2, 9) == RawRecord(2, 9, b"k", b"v9", 2)
    assert joined.at(2, 6) is None and joined.at(3, 5) is None and a.at(4, 5) is None
    assert Frames.join([a]) is a
    with pytest.raises(ValueError):
        joined.at_offset(5)
    with pytest.raises(ValueError):
        Frames.join([b, a])  # partitions out of order
