#!/usr/bin/env python3
"""Cost of sequence tracking per event, and the changelog bytes it writes, in process (no Kafka).

Feeds micro-batches of trades over SYMBOLS symbols (numbers in order, a gap and a
duplicate now and then), as the Arrow rows a worker tracks, through
:func:`k2.sequence.track.track` and through the fingerprints alone, and reports
microseconds per event and state bytes per event.

    .venv/bin/python bench/sequence_bench.py --events 500000 --symbols 50 --batch 5000
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal

import pyarrow as pa

from k2.lake.arrow import events_to_arrow
from k2.lake.records import BufferedEvent
from k2.lake.schemas import TRADES
from k2.sequence.book import SequenceBook
from k2.sequence.fingerprint import fingerprints
from k2.sequence.track import NOT_PAYLOAD, track


def events(n: int, symbols: int) -> list[BufferedEvent]:
    seqs = [0] * symbols
    out = []
    for offset in range(n):
        s = offset % symbols
        seqs[s] += 2 if offset % 997 == 0 else 1  # a gap now and then
        record = {
            "symbol": f"S{s:04d}",
            "company_id": s + 1,
            "exchange": "ASX",
            "exchange_timestamp": 1_394_406_000_000 + offset,
            "price": Decimal("36.667000"),
            "volume": 100,
            "qualifiers": 0,
            "venue": "",
            "buyer_id": None,
            "ingestion_timestamp": 1_394_406_000_000 + offset,
            "sequence_number": seqs[s] - (1 if offset % 1499 == 0 else 0),  # a duplicate now and then
        }
        out.append(BufferedEvent("t", 0, offset, record))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--window", type=int, default=1000)
    args = parser.parse_args()
    feed = events(args.events, args.symbols)
    batches: list[pa.Table] = [
        events_to_arrow(TRADES, feed[i : i + args.batch], sort=False) for i in range(0, len(feed), args.batch)
    ]
    start = time.perf_counter()
    for rows in batches:
        fingerprints(rows, NOT_PAYLOAD)
    fp_s = time.perf_counter() - start
    book = SequenceBook({}, args.window)
    written = writes = 0
    start = time.perf_counter()
    for rows in batches:
        result = track("t", rows, book, 0, now_ms=0)
        writes += len(result.changes)
        written += sum(len(v or b"") for _, _, v in result.changes)
    track_s = time.perf_counter() - start
    n = len(feed)
    print(f"{n} events, {args.symbols} symbols, batches of {args.batch}, window {args.window}")
    print(f"fingerprint alone: {fp_s / n * 1e6:.2f} us/event")
    print(f"track (all of it): {track_s / n * 1e6:.2f} us/event ({n / track_s:,.0f} events/s on one core)")
    print(f"state writes: {writes} ({writes / (n / args.batch):.1f} per batch), {written / n:.1f} bytes/event")


if __name__ == "__main__":
    main()
