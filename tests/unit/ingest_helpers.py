"""Driving an :class:`~k2.ingest.processor.IngressProcessor` the way the pipeline does, for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from k2.app import sources
from k2.ingest.frames import Frames, RawRecord
from k2.ingest.processor import BatchWrites, IngressProcessor, Source
from k2.settings import Settings


async def process(proc: IngressProcessor, records: Sequence[RawRecord]) -> int:
    """Prepare and write ``records`` one partition at a time (as fetched batches are); returns rows accepted."""
    accepted = 0
    for partition in sorted({r.partition for r in records}):
        frames = Frames.from_records([r for r in records if r.partition == partition])
        prepared = await proc.prepare(frames)
        writes: BatchWrites = await proc.write(frames, prepared)
        await asyncio.gather(*writes.futures)
        accepted += writes.accepted
    return accepted


def source(topic: str, kind: str = "trades") -> Source:
    """K2's source definition for ``kind`` (trades, quotes, reference) under the topic name ``topic``."""
    settings = Settings(**{f"{kind}_topic": topic})  # type: ignore[arg-type]
    return next(s for s in sources(settings) if s.topic == topic)


async def sent_reject(sent: list[Any], record: Any, reject: Any) -> asyncio.Future[None]:
    """A ``send_reject`` that records and is delivered at once."""
    sent.append((record, reject))
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut
