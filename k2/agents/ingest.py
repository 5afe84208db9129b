"""The ingest agents: one per source topic, each item a fetched batch of one partition (:mod:`k2.kafka`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust

from k2.pipeline.service import Pipeline

__all__ = ["register_ingest"]


def register_ingest(app: faust.App, pipeline: Pipeline, topics: Mapping[str, faust.TopicT]) -> None:
    """An agent per source topic that hands each batch to the pipeline; the pipeline decides what is acknowledged."""
    for name, topic in topics.items():

        async def ingest(stream: Any) -> None:
            async for batch in stream:
                await pipeline.take(batch)

        ingest.__name__ = ingest.__qualname__ = f"ingest_{name}"
        app.agent(topic, name=f"k2.ingest.{name}")(ingest)
