"""One fetched batch of one source partition: resolve schemas, classify, build chunks, write them.

Everything per record is in :func:`~k2.ingest.classify.classify` (pure); everything per
batch is here, in two phases the pipeline relies on:

1. :meth:`IngressProcessor.prepare` may wait (a registry outage is waited out, never
   turned into rejects; a new writer schema adds its columns to the table) but changes
   nothing, so a batch can be abandoned there (a revocation) at no cost;
2. :meth:`IngressProcessor.write` classifies, runs the stages (sequence tracking,
   reference data), turns rows into Arrow chunks, and hands every write to Kafka: chunks
   and state to their changelogs, rejects to the rejects topic. It returns the delivery
   futures; the pipeline's ledger decides when the batch counts as durable.

A row that cannot be represented in its table (a value outside its column's type) becomes
an ``invalid_value`` reject instead of sinking its batch (:func:`~k2.lake.arrow.rows_to_arrow`),
before the stages see it: sequence tracking never records as landed a row that is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from k2.avro.codec import stored_schema_id
from k2.avro.registry import WriterSchema
from k2.buffer.chunks import REJECTS, ROWS, ChunkKey
from k2.buffer.store import ChunkStore
from k2.errors import DecodeError, RegistryUnavailable, one_line
from k2.ingest.classify import BatchOutcome, RawRecord, Resolution, Validator, classify, schema_ids
from k2.lake.arrow import rejects_to_arrow, rows_to_arrow
from k2.lake.evolution import new_optional_fields
from k2.lake.records import BufferedEvent, RejectRecord
from k2.lake.schemas import TABLES
from k2.metrics import K2Metrics
from k2.models import Reject

__all__ = ["ArrowRecipe", "BatchWrites", "IngressProcessor", "LakeSchemas", "Source", "Stage", "evolve_for"]

log = logging.getLogger(__name__)

#: Builds the Arrow rows of accepted events: ``(events, now_ms, table_schema) -> table``.
ArrowRecipe = Callable[[Sequence[BufferedEvent], int, pa.Schema], pa.Table]

#: Chunks aim at this size in the changelog (the producer compresses them further).
CHUNK_TARGET_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """A source topic: its contract's subject and rules, and where and how its rows land."""

    topic: str
    subject: str
    validate: Validator
    tables: tuple[str, ...]
    """Tables its accepted rows land in (one chunk, committed to each); the first one's schema builds the chunk."""
    to_arrow: ArrowRecipe

    @property
    def table_name(self) -> str:
        return self.tables[0]


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

    async def follow(self, table_names: Sequence[str], writers: Sequence[WriterSchema]) -> None:
        """Add the columns new writer schemas bring, once per (table, schema id)."""
        for table_name in table_names:
            for writer in writers:
                key = (table_name, writer.schema_id)
                if key in self._evolved:
                    continue
                if await asyncio.to_thread(self._evolve, table_name, writer):
                    log.info("%s: added columns for writer schema id %s", table_name, writer.schema_id)
                    self._schemas.pop(table_name, None)
                self._evolved.add(key)

    def forget(self) -> None:
        """Read every table's schema again on next use (the table was recreated or reloaded)."""
        self._schemas.clear()
        self._evolved.clear()


class SchemaResolver(Protocol):
    async def check_subject(self, schema_id: int, subject: str) -> WriterSchema: ...


class Stage(Protocol):
    """A step between :func:`classify` and buffering, for rules that need state (sequence numbers, reference data).

    It may move events from ``outcome.accepted`` to ``outcome.rejected`` (keeping each in
    consumption order) and returns extra chunks to buffer; :meth:`persist` sends the state
    it changed and returns the deliveries (part of the batch's durability).
    """

    def __call__(
        self, records: Sequence[RawRecord], outcome: BatchOutcome, now_ms: int
    ) -> Sequence[tuple[ChunkKey, pa.Table]]: ...

    async def persist(self) -> list[asyncio.Future[Any]]: ...


def evolve_for(writer_schema: WriterSchema, table_schema: Any) -> list[Any]:
    """Iceberg fields a writer schema has and the table lacks (pure; see :mod:`k2.lake.evolution`)."""
    return new_optional_fields(json.loads(writer_schema.schema_str), table_schema)


@dataclass
class BatchWrites:
    """What one batch handed to Kafka, and what it buffered."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    rows: int = 0
    """Rows buffered in chunks, every kind (what the flush will commit)."""
    events: int = 0
    """Of those, the events (rows and rejects; not the gap rows derived from them)."""
    accepted: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Prepared:
    """What phase 1 resolved for a batch."""

    resolved: dict[int, Resolution]
    schema: pa.Schema


SendReject = Callable[[RejectRecord, Reject], Awaitable[asyncio.Future[Any]]]


class IngressProcessor:
    """Processes the batches of one source topic; owned by the pipeline, called by that topic's agent."""

    def __init__(
        self,
        source: Source,
        store: ChunkStore,
        schemas: SchemaResolver,
        lake: LakeSchemas,
        send_reject: SendReject,
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
        self.writing = False
        """True while :meth:`write` hands writes to Kafka (a revocation waits for it instead of cancelling)."""
        self._ids_seen: set[int] = set()
        self._bytes_per_row = 200.0

    # -- phase 1: may wait, changes nothing ---------------------------------------------

    async def prepare(self, records: Sequence[RawRecord]) -> Prepared:
        """Resolve the batch's schema ids and bring the tables' columns up to date; waits out outages."""
        resolved = await self.resolve(schema_ids(records))
        writers = [w for w in resolved.values() if isinstance(w, WriterSchema) and w.schema_id not in self._ids_seen]
        if writers:
            await self._retrying(
                "adding the columns of a new writer schema", self.lake.follow, self.source.tables, writers
            )
            self._ids_seen.update(w.schema_id for w in writers)
            self.metrics.schema_versions_seen.labels(self.source.subject).set(len(self._ids_seen))
        schema = await self._retrying("reading the table schema", self.lake.arrow_schema, self.source.table_name)
        return Prepared(resolved, schema)

    async def _retrying(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A catalog call of phase 1: a failure is an outage to wait out (logged once per retry), never a reject."""
        delay = 0.5
        while True:
            try:
                return await call(*args)
            except Exception as exc:
                log.warning(
                    "%s: %s failed, retrying in %.1fs: %s: %s", self.source.topic, what, delay, type(exc).__name__, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay_s)

    async def resolve(self, ids: set[int]) -> dict[int, Resolution]:
        """Each schema id checked against the topic's subject; waits out registry outages.

        A registry that is down must not turn good events into rejects: the batch waits
        (and with it the partition, which is what backpressure should do) and retries,
        logging one line per retry.
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
                    log.warning("%s: schema registry unavailable, retrying in %.1fs: %s", self.source.topic, delay, err)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay_s)
        return out

    # -- phase 2: classify, build, hand over ----------------------------------------------

    async def write(self, partition: int, records: Sequence[RawRecord], prepared: Prepared) -> BatchWrites:
        """Classify and buffer a batch of one partition; returns the deliveries to wait for."""
        topic = self.source.topic
        now_ms = int(self.clock() * 1000)
        self.metrics.events_consumed.labels(topic).inc(len(records))
        outcome = classify(topic, records, prepared.resolved, self.source.validate, now_ms, self.worker_id)
        # Rows first: what its table cannot hold is a reject before any stage records it as landed.
        pieces, unfit = self._pieces(outcome.accepted, now_ms, prepared.schema)
        if unfit:
            bad = {id(e) for e, _ in unfit}
            outcome.accepted = [e for e in outcome.accepted if id(e) not in bad]
            outcome.rejected = sorted([*outcome.rejected, *self._unfit(unfit, records, now_ms)], key=_position)
        kept_before = len(outcome.accepted)
        extra: list[tuple[ChunkKey, pa.Table]] = []
        for stage in self.stages:
            extra.extend(stage(records, outcome, now_ms))
        if len(outcome.accepted) != kept_before:  # a stage moved events to the rejects (duplicates)
            pieces = _without(pieces, {e.offset for e in outcome.accepted}, self.source.table_name)
        out = BatchWrites(accepted=len(outcome.accepted), rejected=len(outcome.rejected))
        self.writing = True
        try:
            for events, table in pieces:
                key = ChunkKey(ROWS, partition, events[0].offset, events[-1].offset, len(events))
                out.futures.append(await self.store.put(key, table))
                out.rows += key.rows
                out.events += key.rows
            for piece in _by_size(outcome.rejected):
                key = ChunkKey(REJECTS, partition, piece[0].offset, piece[-1].offset, len(piece))
                out.futures.append(await self.store.put(key, rejects_to_arrow(piece)))
                out.rows += key.rows
                out.events += key.rows
            for key, chunk in extra:
                out.futures.append(await self.store.put(key, chunk))
                out.rows += key.rows
            for stage in self.stages:
                out.futures.extend(await stage.persist())
            for r in outcome.rejected:
                out.futures.append(await self.send_reject(r, _reject_model(r)))
        finally:
            self.writing = False
        self.metrics.events_accepted.labels(topic).inc(out.accepted)
        for r in outcome.rejected:
            self.metrics.events_rejected.labels(topic, r.reason).inc()
        if outcome.flagged:
            self.metrics.crossed_quotes.labels(topic).inc(outcome.flagged)
        return out

    def _pieces(
        self, events: Sequence[BufferedEvent], now_ms: int, schema: pa.Schema
    ) -> tuple[list[tuple[list[BufferedEvent], pa.Table]], list[tuple[BufferedEvent, str]]]:
        """Accepted events as Arrow tables of about :data:`CHUNK_TARGET_BYTES`, and the events no column can hold."""
        if not events:
            return [], []
        per_chunk = max(1, int(CHUNK_TARGET_BYTES / self._bytes_per_row))
        size = math.ceil(len(events) / math.ceil(len(events) / per_chunk))
        pieces: list[tuple[list[BufferedEvent], pa.Table]] = []
        unfit: list[tuple[BufferedEvent, str]] = []
        for i in range(0, len(events), size):
            piece = list(events[i : i + size])
            table, bad = rows_to_arrow(lambda evs: self.source.to_arrow(evs, now_ms, schema), piece)
            unfit.extend(bad)
            if table is None:
                continue
            if bad:
                failed = {id(e) for e, _ in bad}
                piece = [e for e in piece if id(e) not in failed]
            pieces.append((piece, table))
            if table.num_rows:
                self._bytes_per_row = 0.8 * self._bytes_per_row + 0.2 * (table.nbytes / table.num_rows)
        return pieces, unfit

    def _unfit(
        self, unfit: Sequence[tuple[BufferedEvent, str]], records: Sequence[RawRecord], now_ms: int
    ) -> list[RejectRecord]:
        raw = {r.offset: r for r in records}
        out = []
        for event, why in unfit:
            rec = raw.get(event.offset)
            key = rec.key if rec is not None else None
            value = rec.value if rec is not None else None
            out.append(
                RejectRecord(
                    event.topic,
                    event.partition,
                    event.offset,
                    "invalid_value",
                    one_line(f"does not fit its table: {why}"),
                    now_ms,
                    stored_schema_id(value),
                    key,
                    value,
                    self.worker_id,
                )
            )
        return out


def _by_size(rejects: Sequence[RejectRecord], target: int = CHUNK_TARGET_BYTES) -> list[list[RejectRecord]]:
    """Rejects in runs of about ``target`` bytes (they carry their records' bytes; one alone may be bigger)."""
    out: list[list[RejectRecord]] = []
    size = 0
    for r in rejects:
        weight = len(r.value or b"") + len(r.key or b"") + len(r.detail or "") + 64
        if not out or (size + weight > target and out[-1]):
            out.append([])
            size = 0
        out[-1].append(r)
        size += weight
    return out


def _without(
    pieces: list[tuple[list[BufferedEvent], pa.Table]], keep: set[int], table_name: str
) -> list[tuple[list[BufferedEvent], pa.Table]]:
    """The pieces with only the events whose offset is in ``keep`` (rows filtered by the table's offset column)."""
    column = TABLES[table_name].position.offset_column
    out = []
    for events, table in pieces:
        kept = [e for e in events if e.offset in keep]
        if not kept:
            continue
        if len(kept) != len(events):
            table = table.filter(pc.is_in(table[column], pa.array([e.offset for e in kept], pa.int64())))
        out.append((kept, table))
    return out


def _position(r: RejectRecord) -> tuple[int, int]:
    return (r.partition, r.offset)


def _reject_model(r: RejectRecord) -> Reject:
    return Reject(
        reason=r.reason,
        detail=r.detail or "",
        source_topic=r.topic,
        source_partition=r.partition,
        source_offset=r.offset,
        schema_id=r.schema_id,
    )
