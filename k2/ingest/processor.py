"""One micro-batch of one source topic: resolve schemas, classify, buffer, route rejects.

The agent hands over Faust events; everything per record is in :func:`classify` (pure)
and everything per batch is here: one registry round trip per *new* schema id, one
Arrow conversion and one changelog write per (batch, partition), one send per reject.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from k2.avro.registry import WriterSchema, WriterSchemaCache
from k2.buffer.chunks import REJECTS, ROWS, ChunkKey
from k2.buffer.store import ChunkStore
from k2.errors import DecodeError, RegistryUnavailable
from k2.ingest.classify import (
    BatchOutcome,
    RawRecord,
    Resolution,
    Validator,
    classify,
    in_offset_order,
    schema_ids,
)
from k2.lake.arrow import companies_to_arrow, events_to_arrow, rejects_to_arrow
from k2.lake.evolution import new_optional_fields
from k2.lake.records import RejectRecord
from k2.lake.schemas import COMPANIES
from k2.metrics import K2Metrics
from k2.models import Reject

__all__ = ["IngressProcessor", "Source", "Stage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A source topic and where its events land."""

    topic: str
    table_name: str
    subject: str
    validate: Validator


class LakeSchemas:
    """The Arrow schema of each table as it stands, and the evolution that keeps it current."""

    def __init__(self, schema_of: Callable[[str], pa.Schema], evolve: Callable[[str, WriterSchema], bool]) -> None:
        self._schema_of = schema_of
        self._evolve = evolve
        self._schemas: dict[str, pa.Schema] = {}
        self._evolved: set[tuple[str, int]] = set()

    async def arrow_schema(self, table_name: str) -> pa.Schema:
        schema = self._schemas.get(table_name)
        if schema is None:
            schema = await asyncio.to_thread(self._schema_of, table_name)
            self._schemas[table_name] = schema
        return schema

    async def follow(self, table_name: str, writers: Sequence[WriterSchema]) -> None:
        """Add the columns new writer schemas bring, once per (table, schema id)."""
        for writer in writers:
            key = (table_name, writer.schema_id)
            if key in self._evolved:
                continue
            if await asyncio.to_thread(self._evolve, table_name, writer):
                log.info("%s: added columns for writer schema id %s", table_name, writer.schema_id)
                self._schemas.pop(table_name, None)
            self._evolved.add(key)


class Stage(Protocol):
    """A step between :func:`classify` and buffering, for rules that need state (sequence numbers, reference data).

    It may move events from ``outcome.accepted`` to ``outcome.rejected`` (keeping each in
    consumption order) and returns extra chunks to buffer. It runs inside the agent's
    stream iteration, before the batch is acked, so it may write to Faust tables.
    """

    def __call__(
        self, records: Sequence[RawRecord], outcome: BatchOutcome, now_ms: int
    ) -> Sequence[tuple[ChunkKey, pa.Table]]: ...

    async def persist(self) -> None:
        """Make the state this batch changed durable (the batch is acked right after)."""
        ...


def evolve_for(writer_schema: WriterSchema, table_schema: Any) -> list[Any]:
    """Iceberg fields a writer schema has and the table lacks (pure; see :mod:`k2.lake.evolution`)."""
    return new_optional_fields(json.loads(writer_schema.schema_str), table_schema)


class IngressProcessor:
    """Processes micro-batches of one source topic; owned by that topic's agent."""

    def __init__(
        self,
        source: Source,
        store: ChunkStore,
        schemas: WriterSchemaCache,
        lake: LakeSchemas,
        send_reject: Callable[[RejectRecord, Reject], Awaitable[Any]],
        metrics: K2Metrics,
        worker_id: str,
        *,
        clock: Callable[[], float] = time.time,
        max_retry_delay_s: float = 10.0,
        stages: Sequence[Stage] = (),
    ) -> None:
        self.source = source
        self.store = store
        self.schemas = schemas
        self.lake = lake
        self.send_reject = send_reject
        self.metrics = metrics
        self.worker_id = worker_id
        self.clock = clock
        self.max_retry_delay_s = max_retry_delay_s
        self.stages = tuple(stages)
        self._ids_seen: set[int] = set()

    async def process(self, records: Sequence[RawRecord]) -> int:
        """Classify and buffer a batch; returns the number of rows buffered for the market table."""
        topic = self.source.topic
        ordered = in_offset_order(records)
        if ordered is not records:
            log.warning(
                "%s: a batch out of offset order (after a rebalance): %d repeated message(s) dropped, the rest sorted",
                topic,
                len(records) - len(ordered),
            )
            records = ordered
        self.metrics.events_consumed.labels(topic).inc(len(records))
        resolved = await self.resolve(schema_ids(records))
        now_ms = int(self.clock() * 1000)
        outcome = classify(topic, records, resolved, self.source.validate, now_ms, self.worker_id)
        for stage in self.stages:
            for key, chunk in stage(records, outcome, now_ms):
                await self.store.put(key, chunk)
        if outcome.accepted_schema_ids - self._ids_seen:
            await self._on_new_schemas(outcome.accepted_schema_ids - self._ids_seen, resolved)
        if outcome.accepted:
            schema = await self.lake.arrow_schema(self.source.table_name)
            for partition, events in _by_partition(outcome.accepted):
                if self.source.table_name == COMPANIES:
                    chunk = companies_to_arrow(events, now_ms, schema)
                else:
                    chunk = events_to_arrow(self.source.table_name, events, schema)
                await self.store.put(ChunkKey(ROWS, partition, events[0].offset, events[-1].offset, len(events)), chunk)
            self.metrics.events_accepted.labels(topic).inc(len(outcome.accepted))
        if outcome.rejected:
            for partition, rejects in _by_partition(outcome.rejected):
                chunk = rejects_to_arrow(rejects)
                key = ChunkKey(REJECTS, partition, rejects[0].offset, rejects[-1].offset, len(rejects))
                await self.store.put(key, chunk)
            for r in outcome.rejected:
                self.metrics.events_rejected.labels(topic, r.reason).inc()
                await self.send_reject(r, _reject_model(r))
        if outcome.flagged:
            self.metrics.crossed_quotes.labels(topic).inc(outcome.flagged)
        # The batch's events are acked when this returns: their state and chunks must be on the broker.
        for stage in self.stages:
            await stage.persist()
        await self.store.durable()
        return len(outcome.accepted)

    async def resolve(self, ids: set[int]) -> dict[int, Resolution]:
        """Each schema id checked against the topic's subject; waits out registry outages.

        A registry that is down must not turn good events into rejects: the batch waits
        (and with it the partition, which is what backpressure should do) and retries.
        """
        out: dict[int, Resolution] = {}
        for schema_id in ids:
            delay = 0.5
            while True:
                try:
                    out[schema_id] = await self.schemas.check_subject(schema_id, self.source.subject)
                    break
                except DecodeError as err:
                    out[schema_id] = err
                    break
                except RegistryUnavailable as err:
                    self.metrics.registry_retries.inc()
                    log.warning("schema registry unavailable, retrying in %.1fs: %s", delay, err)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay_s)
        return out

    async def _on_new_schemas(self, ids: set[int], resolved: dict[int, Resolution]) -> None:
        writers = [w for i in sorted(ids) if isinstance(w := resolved[i], WriterSchema)]
        await self.lake.follow(self.source.table_name, writers)
        self._ids_seen |= ids
        self.metrics.schema_versions_seen.labels(self.source.subject).set(len(self._ids_seen))


def _by_partition(items: Sequence[Any]) -> list[tuple[int, list[Any]]]:
    """Items grouped by ``.partition``, each group in consumption (offset) order."""
    groups: dict[int, list[Any]] = {}
    for item in items:
        groups.setdefault(item.partition, []).append(item)
    return sorted(groups.items())


def _reject_model(r: RejectRecord) -> Reject:
    return Reject(
        reason=r.reason,
        detail=r.detail or "",
        source_topic=r.topic,
        source_partition=r.partition,
        source_offset=r.offset,
        schema_id=r.schema_id,
    )
