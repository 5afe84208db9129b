#!/usr/bin/env python3
"""The floor: what Python reads and decodes, with nothing else to do (aiokafka getmany + fastavro).

One consumer in its own group reads the given topics from the earliest offset with
``getmany``, splits every value's Confluent frame (magic byte, 4-byte schema id), fetches
each writer schema once from the registry and decodes the body with fastavro's
``schemaless_reader``; it only counts. It appends ``first <unix time> <count>`` after the
first batch and ``done <unix time> <count>`` once ``--total`` values are decoded to
``--status``, then waits to be stopped (so that the driver can read its /proc figures).

    python bench/systems/floor.py --broker 127.0.0.1:9092 --registry http://.../apis/ccompat/v7 \
        --topics a,b --total 2000000 --group floor-x --status /tmp/floor.status
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaConsumer

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def writer_schema(registry: str, schema_id: int) -> Any:
    with _NO_PROXY.open(f"{registry.rstrip('/')}/schemas/ids/{schema_id}", timeout=10) as response:
        return fastavro.parse_schema(json.loads(json.loads(response.read())["schema"]))


def mark(status: Path, what: str, count: int) -> None:
    """One status line for the driver (a few bytes, twice a run: not worth a thread)."""
    with status.open("a") as fh:
        fh.write(f"{what} {time.time()} {count}\n")


async def run(args: argparse.Namespace) -> int:
    consumer = AIOKafkaConsumer(
        *args.topics.split(","),
        bootstrap_servers=args.broker,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    schemas: dict[int, Any] = {}
    count = 0
    first_seen = False
    status = Path(args.status)
    await consumer.start()
    try:
        while count < args.total:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for record in records:
                    value = record.value
                    if not value or value[0] != 0:
                        raise ValueError(f"not Confluent-framed: {record.topic}/{record.partition}@{record.offset}")
                    schema_id = int.from_bytes(value[1:5], "big")
                    schema = schemas.get(schema_id)
                    if schema is None:
                        schema = schemas[schema_id] = writer_schema(args.registry, schema_id)
                    fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
                    count += 1
            if batches and count and not first_seen:
                first_seen = True
                mark(status, "first", count)
        mark(status, "done", count)
        # Stay until the driver has read this process's CPU and memory from /proc and stops it.
        await asyncio.sleep(args.linger)
    finally:
        await consumer.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topics", required=True, help="comma separated")
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--linger", type=float, default=600, help="seconds to stay after done (the driver stops it)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
