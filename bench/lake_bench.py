"""How fast K2's landing path is: events to Arrow, and an exactly-once commit on SQLite.

    .venv/bin/python bench/lake_bench.py [--rows 50000] [--commits 10]

Numbers depend on the machine; they are for spotting regressions, not for promises.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from pyiceberg.catalog.sql import SqlCatalog

from k2.lake.arrow import events_to_arrow
from k2.lake.records import BufferedEvent
from k2.lake.schemas import TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

TOPIC = "market.trades.raw"
T0 = 1_750_000_000_000


def trades(n: int, first_offset: int = 0, partitions: int = 6) -> list[BufferedEvent]:
    rng = random.Random(first_offset)
    out = []
    for i in range(first_offset, first_offset + n):
        record: dict[str, Any] = {
            "symbol": rng.choice(("BHP", "CBA", "CSL", "WES", "NAB", "ANZ")),
            "company_id": 1 + i % 6,
            "exchange": "ASX",
            "exchange_timestamp": T0 + rng.randint(0, 6 * 3_600_000),
            "price": Decimal(rng.randint(1, 99_999_999)).scaleb(-6),
            "volume": rng.randint(1, 10_000),
            "qualifiers": 0,
            "venue": "",
            "buyer_id": None if i % 3 else "B1",
            "ingestion_timestamp": T0 + 5_000,
            "sequence_number": i if i % 7 else None,
        }
        out.append(BufferedEvent(TOPIC, i % partitions, i // partitions, record))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--commits", type=int, default=10)
    args = parser.parse_args()

    events = trades(args.rows)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        batch = events_to_arrow(TRADES, events)
        timings.append(time.perf_counter() - start)
    best, median = min(timings), statistics.median(timings)
    print(
        f"events_to_arrow  {args.rows} trades: "
        f"best {args.rows / best:,.0f} rows/s, median {args.rows / median:,.0f} rows/s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Path(tmp) / "warehouse"
        warehouse.mkdir()
        catalog = SqlCatalog("bench", uri=f"sqlite:///{tmp}/catalog.db", warehouse=warehouse.as_uri())
        ensure_tables(catalog)
        writer = IcebergWriter(catalog, {TRADES: TOPIC}, "bench")
        latencies = []
        per_partition = args.rows // 6
        for n in range(args.commits):
            batch = events_to_arrow(TRADES, trades(args.rows, first_offset=n * args.rows))
            offsets = {(TOPIC, p): (n + 1) * per_partition - 1 for p in range(6)}
            result = writer.commit(TRADES, batch, offsets, uuid.uuid4().hex)
            latencies.append(result.duration_s)
        replay = writer.commit(TRADES, batch, offsets, uuid.uuid4().hex)
        median_s = statistics.median(latencies)
        print(
            f"commit           {args.rows} trades x {args.commits}: median {median_s * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms ({args.rows / median_s:,.0f} rows/s)"
        )
        print(f"replayed commit  {replay.rows_dropped} rows dropped in {replay.duration_s * 1000:.0f} ms, none written")


if __name__ == "__main__":
    main()
