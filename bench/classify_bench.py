#!/usr/bin/env python3
"""Cost of the per-record path on valid input: classify (frame split, fastavro decode, validate)
and events_to_arrow, over N valid trades framed like a producer frames them. In process, no Kafka.

Guards the hot path: the totality checks (int ranges, decimal precision, reject isolation)
must not make a clean batch measurably slower. Reports the best of ``--repeat`` runs, the
usual way to see through a noisy machine.

    .venv/bin/python bench/classify_bench.py --events 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal
from typing import Any

from k2.avro.codec import encode
from k2.avro.schemas import CONTRACTS
from k2.ingest.classify import RawRecord, classify
from k2.lake.arrow import events_to_arrow
from k2.lake.schemas import TRADES
from k2.validation import validate_trade

T0 = 1_750_000_000_000


class _Writer:
    def __init__(self, parsed: Any) -> None:
        self.parsed = parsed


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
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    records = frames(args.events)
    schemas = {1: _Writer(CONTRACTS["trade"].parsed)}
    now = T0 + 60_000
    best_classify = best_arrow = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        outcome = classify("market.trades.raw", records, schemas, validate_trade, now, "bench")
        mid = time.perf_counter()
        table = events_to_arrow(TRADES, outcome.accepted)
        end = time.perf_counter()
        assert len(outcome.accepted) == args.events and table.num_rows == args.events
        best_classify = min(best_classify, mid - start)
        best_arrow = min(best_arrow, end - mid)
    total = best_classify + best_arrow
    print(
        f"{args.events} trades: classify {best_classify * 1000:.0f} ms, events_to_arrow {best_arrow * 1000:.0f} ms, "
        f"total {total * 1000:.0f} ms ({args.events / total:,.0f} events/s; best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
