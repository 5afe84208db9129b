#!/usr/bin/env python3
"""Classification of N valid trades, both ways, in process (no Kafka): per record, and a batch at a time.

* per record: :func:`~k2.ingest.classify.classify` (frame split, fastavro decode, validate)
  then :func:`~k2.lake.arrow.events_to_arrow`, the definition of what a record becomes;
* batch: :func:`~k2.ingest.processor.classify_batch` with the source's row rules and the batch
  path taken whatever the batch's size: decode in blocks, check in columns, the per-record path
  for what it cannot prove;
* worker: :func:`~k2.ingest.processor.classify_batch` as the worker runs it: the batch path from
  :data:`~k2.ingest.fast.MIN_PROVED_BATCH` records, the per-record path below.

Batches of ``--batch`` records of one partition, framed like a producer frames them. Reports
the best of ``--repeat`` runs of each (the usual way to see through a noisy machine), and
their ratio, measured in the same run.

    .venv/bin/python bench/classify_bench.py --events 100000 --batch 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal

from k2.app import sources
from k2.avro.codec import encode
from k2.avro.registry import WriterSchema
from k2.avro.schemas import CONTRACTS
from k2.ingest import fast
from k2.ingest.classify import classify
from k2.ingest.fast import MIN_PROVED_BATCH, DecoderCache
from k2.ingest.frames import Frames, RawRecord
from k2.ingest.processor import Prepared, classify_batch
from k2.lake.arrow import arrow_schema, events_to_arrow
from k2.lake.schemas import TRADES
from k2.settings import Settings
from k2.validation import validate_trade

T0 = 1_750_000_000_000
TOPIC = "market.trades.raw"


def frames(n: int) -> list[RawRecord]:
    schema = CONTRACTS["trade"].parsed
    out = []
    for offset in range(n):
        record = {
            "symbol": f"S{offset % 50:04d}",
            "company_id": offset % 50 + 1,
            "exchange": "ASX",
            "exchange_timestamp": T0 + offset,
            "price": Decimal(36_667_000 + offset % 1000).scaleb(-6),
            "volume": 100 + offset % 7,
            "qualifiers": 0,
            "venue": "",
            "buyer_id": None,
            "ingestion_timestamp": T0 + offset + 5,
            "sequence_number": offset + 1,
        }
        out.append(RawRecord(0, offset, b"S", encode(1, schema, record), T0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    records = frames(args.events)
    batches = [Frames.from_records(records[i : i + args.batch]) for i in range(0, len(records), args.batch)]
    contract = CONTRACTS["trade"]
    writer = WriterSchema(1, contract.schema_str, contract.parsed, None)
    prepared = Prepared({1: writer}, arrow_schema(TRADES))
    source = next(s for s in sources(Settings()) if s.topic == TOPIC)
    now = T0 + 60_000
    best_record = best_batch = best_worker = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        for batch in batches:
            outcome = classify(TOPIC, batch.records(), prepared.resolved, validate_trade, now, "bench")
            table = events_to_arrow(TRADES, outcome.accepted, sort=False)
            assert table.num_rows == len(batch)
        best_record = min(best_record, time.perf_counter() - start)
        decoders = DecoderCache()
        fast.MIN_PROVED_BATCH = 1  # the batch path at any size
        start = time.perf_counter()
        for batch in batches:
            taken = classify_batch(source, batch, prepared, decoders, now, "bench")
            assert taken.proved == len(batch)
        best_batch = min(best_batch, time.perf_counter() - start)
        fast.MIN_PROVED_BATCH = MIN_PROVED_BATCH
        start = time.perf_counter()
        for batch in batches:
            taken = classify_batch(source, batch, prepared, decoders, now, "bench")
            assert taken.accepted == len(batch) and taken.proved in (0, len(batch))
        best_worker = min(best_worker, time.perf_counter() - start)
    n = args.events
    print(f"{n} trades in batches of {args.batch}, best of {args.repeat}:")
    print(f"  per record: {best_record * 1000:.0f} ms ({n / best_record:,.0f} events/s)")
    print(f"  batch path: {best_batch * 1000:.0f} ms ({n / best_batch:,.0f} events/s)")
    worker = f"{best_worker * 1000:.0f} ms ({n / best_worker:,.0f} events/s)"
    print(f"  worker (batch path from {MIN_PROVED_BATCH} records): {worker}")
    print(f"  per record over batch path: {best_record / best_batch:.2f}x")


if __name__ == "__main__":
    main()
