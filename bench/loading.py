"""The benchmark's topics: where the broker and registry answer, fresh topics, the sample loaded or produced live.

Each run names its own topics (a prefix per run and phase) and loads ``data/sample`` into them
with ``k2 replay``: ``--loop N --loop-step 1`` passes, each company of the sample sent as
``--instruments`` instruments (its own symbol, key and sequence numbers each) so that the load
spreads over the partitions; the sample's three symbols alone would fill one partition per topic.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from bench.runners import Source, SystemFailed, base_env, k2_command

__all__ = [
    "EVENTS_PER_PASS",
    "PARTITIONS",
    "delete_topics",
    "end_offsets",
    "load",
    "loader_env",
    "replay_args",
    "services",
    "topics",
]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
EVENTS_PER_PASS = 2243 + 2609  # trades + quotes in data/sample (reference data is sent once)
PARTITIONS = 6


def services() -> tuple[str, str]:
    """The broker and registry: ``K2_KAFKA_BOOTSTRAP_SERVERS`` / ``K2_SCHEMA_REGISTRY_URL``, else 127.0.0.1 ports."""
    broker = os.environ.get("K2_KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('K2_KAFKA_PORT', '9092')}"
    registry = (
        os.environ.get("K2_SCHEMA_REGISTRY_URL")
        or f"http://127.0.0.1:{os.environ.get('K2_REGISTRY_PORT', '8081')}/apis/ccompat/v7"
    )
    return broker, registry


def topics(prefix: str) -> Source:
    broker, registry = services()
    return Source(broker, registry, f"{prefix}.trades", f"{prefix}.quotes", f"{prefix}.reference", f"{prefix}.rejects")


def loader_env(source: Source, var: Path, partitions: int = PARTITIONS) -> dict[str, str]:
    """``k2 init`` / ``k2 replay`` over ``source``, creating its market topics with ``partitions`` partitions."""
    return (
        base_env()
        | source.k2_env()
        | {
            "K2_VAR_DIR": str(var),
            "K2_TRADES_PARTITIONS": str(partitions),
            "K2_QUOTES_PARTITIONS": str(partitions),
        }
    )


def end_offsets(source: Source) -> dict[tuple[str, int], int]:
    from k2.admin.watermarks import end_offsets as read
    from k2.settings import Settings

    return read(Settings(kafka_bootstrap_servers=source.broker), source.market)


def replay_args(passes: int, instruments: int) -> list[str]:
    """``k2 replay`` of the sample: ``passes`` passes of ``instruments`` instruments per company."""
    loop = ["--loop", str(passes), "--loop-step", "1", "--instruments", str(instruments)]
    return ["replay", str(SAMPLE), *loop, "--no-progress"]


def passes_for(events: float, instruments: int) -> int:
    """Passes of the sample that send at least ``events`` trades + quotes."""
    return max(1, math.ceil(events / (EVENTS_PER_PASS * instruments)))


def load(
    source: Source, events: int, instruments: int, var: Path, partitions: int = PARTITIONS
) -> tuple[dict[tuple[str, int], int], int, float]:
    """Fresh topics holding at least ``events`` trades + quotes: (end offsets, passes, seconds)."""
    env = loader_env(source, var, partitions)
    k2_command(["init"], env, timeout_s=300)
    passes = passes_for(events, instruments)
    begin = time.monotonic()
    k2_command(replay_args(passes, instruments), env, 3600)
    seconds = time.monotonic() - begin
    ends = end_offsets(source)
    for topic in source.market:
        got = sum(1 for t, _ in ends if t == topic)
        if got != partitions:
            raise SystemFailed(f"{topic} has {got} partitions, not {partitions}: K2_*_PARTITIONS or an old topic?")
    return ends, passes, seconds


def delete_topics(broker: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``; what could not be deleted, said."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": broker})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    problems = []
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(60)
            except Exception as exc:  # a topic already gone is fine; say anything else
                problems.append(f"could not delete a topic: {exc}")
    return problems
