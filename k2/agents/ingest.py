"""The ingest agents: one per source topic, each item what one fetch returned for the topic (:mod:`k2.kafka`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust

from k2.pipeline.service import Pipeline

__all__ = ["register_ingest"]


def register_ingest(app: faust.App, pipeline: Pipeline, topics: Mapping[str, faust.TopicT]) -> None:
    """An agent per source topic that hands each fetch to the pipeline; the pipeline decides what is acknowledged."""
    for name, topic in topics.items():

        async def ingest(stream: Any) -> None:
            async for fetch in stream:
                await pipeline.take(fetch)

        ingest.__name__ = ingest.__qualname__ = f"ingest_{name}"
        app.agent(topic, name=f"k2.ingest.{name}")(ingest)
