"""A bare Faust application: one agent that only counts ``take_events(1000, 1.0)`` batches.

What Faust's own per-message path costs with no work behind it, for the benchmark to put
beside the floor and K2. Run as ``faust -A bench.systems.faust_bare worker`` with:

- ``BENCH_APP_ID`` (the consumer group), ``BENCH_BROKER`` (host:port), ``BENCH_WEB_PORT``;
- ``BENCH_TOPICS`` (comma separated; values are not decoded), ``BENCH_TOTAL``;
- ``BENCH_STATUS``: a file that gets ``first <unix time> <count>`` after the first batch and
  ``done <unix time> <count>`` once ``BENCH_TOTAL`` events were counted.

The driver kills the worker after ``done``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust

TOTAL = int(os.environ.get("BENCH_TOTAL", "0"))
STATUS = Path(os.environ.get("BENCH_STATUS", "faust-bare.status"))

app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-faust-bare"),
    broker=f"kafka://{os.environ.get('BENCH_BROKER', '127.0.0.1:9092')}",
    store="memory://",
    web_port=int(os.environ.get("BENCH_WEB_PORT", "6067")),
    web_host="127.0.0.1",
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
)
source = app.topic(
    *os.environ.get("BENCH_TOPICS", "bench.trades").split(","),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
counted = 0


def _mark(what: str) -> None:
    with STATUS.open("a") as fh:
        fh.write(f"{what} {time.time()} {counted}\n")


@app.agent(source)
async def count(stream: Any) -> None:  # a faust.Stream: StreamT does not declare take_events
    global counted
    done = False
    async for events in stream.take_events(1000, 1.0):
        first = counted == 0
        counted += len(events)
        if first:
            _mark("first")
        if not done and counted >= TOTAL:
            done = True
            _mark("done")
