#!/usr/bin/env python3
"""Cost of sequence tracking per event, and the changelog bytes it writes, in process (no Kafka).

Feeds micro-batches of trades over SYMBOLS symbols (numbers in order, a gap and a
duplicate now and then), as the Arrow rows a worker tracks, through
:func:`k2.sequence.track.track` and through the fingerprints alone, and reports
microseconds per event and state bytes per event.

With ``--partitions P`` the symbols spread over P partitions and a fetch is a batch of
``--batch`` events per partition, tracked partition by partition or, with ``--joined``, in one
call as the worker does (a live fetch: about 20 events in each of 24 partitions).

    .venv/bin/python bench/sequence_bench.py --events 500000 --symbols 50 --batch 5000
    .venv/bin/python bench/sequence_bench.py --events 200000 --symbols 500 --partitions 24 --batch 20 --joined
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


def events(n: int, symbols: int, partitions: int = 1) -> list[BufferedEvent]:
    seqs = [0] * symbols
    offsets = [0] * partitions
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
        partition = s % partitions
        out.append(BufferedEvent("t", partition, offsets[partition], record))
        offsets[partition] += 1
    return out


def fetches(feed: list[BufferedEvent], partitions: int, batch: int) -> list[list[list[BufferedEvent]]]:
    """Per fetch, a batch of up to ``batch`` events of each partition (ascending)."""
    by_partition: list[list[BufferedEvent]] = [[] for _ in range(partitions)]
    for e in feed:
        by_partition[e.partition].append(e)
    longest = max(len(p) for p in by_partition)
    return [[p[i : i + batch] for p in by_partition if p[i : i + batch]] for i in range(0, longest, batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=1, help="partitions the symbols spread over")
    parser.add_argument("--joined", action="store_true", help="track a fetch's partitions in one call")
    args = parser.parse_args()
    feed = events(args.events, args.symbols, args.partitions)
    calls: list[tuple[pa.Table, int | None]] = []
    for fetch in fetches(feed, args.partitions, args.batch):
        if args.joined and len(fetch) > 1:
            calls.append((events_to_arrow(TRADES, [e for b in fetch for e in b], sort=False), None))
        else:
            calls.extend((events_to_arrow(TRADES, b, sort=False), b[0].partition) for b in fetch)
    batches = [rows for rows, _ in calls]
    start = time.perf_counter()
    for rows in batches:
        fingerprints(rows, NOT_PAYLOAD)
    fp_s = time.perf_counter() - start
    book = SequenceBook({}, args.window)
    written = writes = 0
    start = time.perf_counter()
    for rows, partition in calls:
        result = track("t", rows, book, partition, now_ms=0)
        writes += len(result.changes)
        written += sum(len(v or b"") for _, _, v in result.changes)
    track_s = time.perf_counter() - start
    n = len(feed)
    how = f"{args.partitions} partitions{', joined' if args.joined else ''}, {len(calls)} calls"
    print(f"{n} events, {args.symbols} symbols, batches of {args.batch}, window {args.window}, {how}")
    print(f"fingerprint alone: {fp_s / n * 1e6:.2f} us/event")
    print(f"track (all of it): {track_s / n * 1e6:.2f} us/event ({n / track_s:,.0f} events/s on one core)")
    print(f"state writes: {writes} ({writes / len(calls):.1f} per call), {written / n:.1f} bytes/event")


if __name__ == "__main__":
    main()
