"""Ingress agents: one per source topic, micro-batches in, chunks and rejects out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from k2.agents.wiring import flush_requests, quotes_topic, reference_topic, runtime, settings, trades_topic
from k2.app import app
from k2.ingest.classify import RawRecord


def raw_records(events: Sequence[Any]) -> list[RawRecord]:
    """Faust events as :class:`RawRecord` (position, untouched bytes, broker time in ms)."""
    out = []
    for event in events:
        m = event.message
        out.append(RawRecord(m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000)))
    return out


async def request_flush(reason: str) -> None:
    await flush_requests.send(value=reason)


async def consume(topic: str, stream: Any) -> None:
    """The loop of every ingress agent: micro-batches of events, acked after they are buffered."""
    async for events in stream.take_events(settings.ingest_batch_max, within=settings.ingest_batch_within_s):
        await runtime.ingest(topic, raw_records(events), request_flush)


@app.agent(trades_topic, name="k2.ingest.trades")
async def ingest_trades(stream: Any) -> None:
    await consume(settings.trades_topic, stream)


@app.agent(quotes_topic, name="k2.ingest.quotes")
async def ingest_quotes(stream: Any) -> None:
    await consume(settings.quotes_topic, stream)


@app.agent(reference_topic, name="k2.ingest.reference")
async def ingest_reference(stream: Any) -> None:
    await consume(settings.reference_topic, stream)
