"""Fetched batches of a source topic: resolve schemas, classify, build chunks, write them.

What a record becomes is defined per record by :func:`~k2.ingest.classify.classify`
(pure); :func:`classify_batch` gets the same answer for a whole batch, in columns where
the batch path (:mod:`k2.ingest.fast`) proves it and record by record for the rest.
Everything per batch is here, in two phases the pipeline relies on (a *batch* is one
partition's records of one fetch; the batches of a topic's partitions from one fetch are
prepared, classified and staged joined, in one block, then written partition by partition,
each exactly as its batch alone would be):

1. :meth:`IngressProcessor.prepare` may wait (a registry outage is waited out, never
   turned into rejects; a new writer schema adds its columns to the table) but changes
   nothing, so a batch can be abandoned there (a revocation) at no cost;
2. :meth:`IngressProcessor.write` classifies, runs the stages (sequence tracking,
   reference data) on the rows, cuts them into Arrow chunks, and hands every write to Kafka: chunks
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
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from k2.avro.codec import stored_schema_id
from k2.avro.registry import WriterSchema
from k2.buffer.chunks import REJECTS, ROWS, ChunkKey
from k2.buffer.store import ChunkStore
from k2.errors import DecodeError, one_line
from k2.ingest.classify import Resolution, Validator, classify
from k2.ingest.fast import DecoderCache, RowRules, fast_rows, in_log_order
from k2.ingest.frames import JOINED, Frames
from k2.lake.arrow import rejects_to_arrow, rows_to_arrow
from k2.lake.evolution import new_optional_fields
from k2.lake.records import BufferedEvent, RejectRecord
from k2.lake.schemas import TABLES, SourcePosition
from k2.lake.state import LakeState
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.retry import Backoff, retry_unavailable

__all__ = [
    "ArrowRecipe",
    "BatchWrites",
    "IngressProcessor",
    "LakeSchemas",
    "Prepared",
    "Source",
    "Stage",
    "Taken",
    "classify_batch",
    "evolve_for",
    "partition_slices",
]

log = logging.getLogger(__name__)

#: Builds the Arrow rows of accepted events, in their order: ``(events, now_ms, table_schema) -> table``.
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
    row_rules: RowRules | None = None
    """Sufficient conditions for :attr:`validate` in columns: with them, batches take the batch path
    (:mod:`k2.ingest.fast`); without, every record goes through :func:`~k2.ingest.classify.classify`."""

    @property
    def table_name(self) -> str:
        return self.tables[0]


class LakeSchemas:
    """The tables' schemas as ingestion needs them, kept in the writer's :class:`~k2.lake.state.LakeState`.

    What a table's schema is, and which writer schemas' columns it has, live with its marks in
    one object per table, forgotten together when the table is created again; then the next
    batch of each writer schema adds its columns again, before any of its rows lands.
    """

    def __init__(
        self,
        state: Callable[[], LakeState],
        schema_of: Callable[[str], pa.Schema],
        evolve: Callable[[str, WriterSchema], bool],
    ) -> None:
        self._state = state
        self._schema_of = schema_of
        self._evolve = evolve

    async def arrow_schema(self, table_name: str) -> pa.Schema:
        """The table's Arrow schema: from the loaded table at once, else loaded in a thread (catalog I/O).

        Every batch asks: a thread hop per batch cost a live worker's event loop more than the answer.
        """
        known = self._state().of(table_name)
        if known.table is not None:
            return known.arrow_schema()
        return await asyncio.to_thread(self._schema_of, table_name)

    async def follow(self, table_names: Sequence[str], writers: Sequence[WriterSchema]) -> None:
        """Add the columns writer schemas bring, once per (table, schema id) while the table is known."""
        for table_name in table_names:
            for writer in writers:
                applied = self._state().of(table_name).applied
                if writer.schema_id in applied:
                    continue
                if await asyncio.to_thread(self._evolve, table_name, writer):
                    log.info("%s: added columns for writer schema id %s", table_name, writer.schema_id)
                applied.add(writer.schema_id)


class SchemaResolver(Protocol):
    async def check_subject(self, schema_id: int, subject: str) -> WriterSchema: ...


@dataclass
class Taken:
    """What one batch became, between classification and its writes."""

    frames: Frames
    rows: pa.Table | None
    """Accepted rows in the table's schema, in (partition, offset) order (None: none)."""
    rejected: list[RejectRecord] = field(default_factory=list)
    """In (partition, offset) order."""
    flagged: int = 0
    """Accepted events the validator flagged (crossed quotes)."""
    proved: int = 0
    """Accepted events the batch path proved (the others went through the per-record path)."""

    @property
    def accepted(self) -> int:
        return 0 if self.rows is None else self.rows.num_rows

    def split(self, parts: Sequence[Frames], position: SourcePosition) -> list[Taken]:
        """What joined frames became, per part (the single-partition frames they joined, in their order).

        Each part gets its rows (a slice: they are in partition order) and its rejects; the
        counts (flagged, proved) stay with the whole.
        """
        if self.frames.partition != JOINED:
            return [self]
        by_partition = partition_slices(self.rows, position.partition_column) if self.rows is not None else {}
        rejected: dict[int, list[RejectRecord]] = {}
        for r in self.rejected:
            rejected.setdefault(r.partition, []).append(r)
        return [Taken(f, by_partition.get(f.partition), rejected.get(f.partition, [])) for f in parts]


def partition_slices(rows: pa.Table, column: str) -> dict[int, pa.Table]:
    """Rows in partition order, as one slice per partition (zero-copy), keyed by the partition."""
    values = rows.column(column).to_numpy()
    starts = [0, *(np.flatnonzero(np.diff(values)) + 1).tolist(), len(values)]
    return {int(values[a]): rows.slice(a, b - a) for a, b in pairwise(starts) if b > a}


class Stage(Protocol):
    """A step between classification and buffering, for rules that need state (sequence numbers, reference data).

    It sees a batch, or a fetch's batches joined (``batch.frames.partition`` is then
    :data:`~k2.ingest.frames.JOINED` and each row's partition column says). It may move rows
    from ``batch.rows`` to ``batch.rejected`` (keeping both in (partition, offset) order) and
    returns extra chunks to buffer (each keyed by its partition); :meth:`persist` then sends the
    state it changed for one partition and returns the deliveries (part of that partition's
    batch's durability).
    """

    def __call__(self, batch: Taken, now_ms: int) -> Sequence[tuple[ChunkKey, pa.Table]]: ...

    async def persist(self, partition: int) -> list[asyncio.Future[Any]]: ...


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
        """Writer schema ids seen on the topic (for the metric only: what the tables have is the lake's)."""
        self._backoff = Backoff(first_s=0.5, max_s=max_retry_delay_s)
        self._bytes_per_row = 200.0
        self._decoders = DecoderCache()

    # -- phase 1: may wait, changes nothing ---------------------------------------------

    async def prepare(self, frames: Frames) -> Prepared:
        """Resolve the batch's schema ids and bring the tables' columns up to date; waits out outages."""
        resolved = await self.resolve(frames.schema_ids())
        writers = [w for w in resolved.values() if isinstance(w, WriterSchema)]
        if writers:
            await retry_unavailable(
                lambda: self.lake.follow(self.source.tables, writers),
                what=f"{self.source.topic}: adding the columns of its writer schemas",
                backoff=self._backoff,
                level=logging.WARNING,
            )
            self._ids_seen.update(w.schema_id for w in writers)
            self.metrics.schema_versions_seen.labels(self.source.subject).set(len(self._ids_seen))
        schema = await retry_unavailable(
            lambda: self.lake.arrow_schema(self.source.table_name),
            what=f"{self.source.topic}: reading the table schema",
            backoff=self._backoff,
            level=logging.WARNING,
        )
        return Prepared(resolved, schema)

    async def resolve(self, ids: set[int]) -> dict[int, Resolution]:
        """Each schema id checked against the topic's subject; waits out registry outages.

        A registry that is down must not turn good events into rejects: the batch waits
        (and with it the partition, which is what backpressure should do) and retries,
        logging one line per retry.
        """
        out: dict[int, Resolution] = {}
        for schema_id in ids:
            try:
                out[schema_id] = await retry_unavailable(
                    lambda schema_id=schema_id: self.schemas.check_subject(schema_id, self.source.subject),  # type: ignore[misc]
                    what=f"{self.source.topic}: the schema registry",
                    backoff=self._backoff,
                    on_unavailable=lambda cause: self.metrics.registry_retries.inc(),
                    level=logging.WARNING,
                )
            except DecodeError as err:
                out[schema_id] = err
        return out

    # -- phase 2: classify, build, hand over ----------------------------------------------

    async def write(self, frames: Frames, prepared: Prepared) -> BatchWrites:
        """Classify and buffer a batch of one partition; returns the deliveries to wait for."""
        return (await self.write_many([frames], prepared))[0]

    async def write_many(self, parts: Sequence[Frames], prepared: Prepared) -> list[BatchWrites]:
        """Classify and stage the batches of distinct partitions (ascending) in one block, then buffer each.

        Per part, in the order given, the writes are those of its batch alone, and its
        :class:`BatchWrites` holds only its own deliveries (the ledger tracks each partition apart).
        """
        topic = self.source.topic
        now_ms = int(self.clock() * 1000)
        joined = Frames.join(parts)
        self.metrics.events_consumed.labels(topic).inc(len(joined))
        whole = classify_batch(self.source, joined, prepared, self._decoders, now_ms, self.worker_id)
        self._learn_row_size(whole.rows)
        out: list[BatchWrites] = []
        self.writing = True
        try:
            extra: dict[int, list[tuple[ChunkKey, pa.Table]]] = {}
            for stage in self.stages:
                for key, chunk in stage(whole, now_ms):
                    extra.setdefault(key.partition, []).append((key, chunk))
            for taken in whole.split(parts, TABLES[self.source.table_name].position):
                out.append(await self._buffer(taken, extra.get(taken.frames.partition, [])))
        finally:
            self.writing = False
        self.metrics.events_batch_path.labels(topic).inc(whole.proved)
        if whole.flagged:
            self.metrics.crossed_quotes.labels(topic).inc(whole.flagged)
        return out

    async def _buffer(self, taken: Taken, extra: Sequence[tuple[ChunkKey, pa.Table]]) -> BatchWrites:
        """One partition's part, staged: every write handed to Kafka, in the order recovery relies on."""
        topic = self.source.topic
        partition = taken.frames.partition
        produced_ms = min((ts for ts in taken.frames.timestamps if ts > 0), default=None)
        out = BatchWrites(accepted=taken.accepted, rejected=len(taken.rejected))
        for table in self._pieces(taken.rows):
            offsets = table[TABLES[self.source.table_name].position.offset_column]
            key = ChunkKey(ROWS, partition, offsets[0].as_py(), offsets[-1].as_py(), table.num_rows)
            out.futures.append(await self.store.put(key, table, produced_ms))
            out.rows += key.rows
            out.events += key.rows
        for piece in _by_size(taken.rejected):
            key = ChunkKey(REJECTS, partition, piece[0].offset, piece[-1].offset, len(piece))
            out.futures.append(await self.store.put(key, rejects_to_arrow(piece), produced_ms))
            out.rows += key.rows
            out.events += key.rows
        for key, chunk in extra:
            out.futures.append(await self.store.put(key, chunk, produced_ms))
            out.rows += key.rows
        for stage in self.stages:
            out.futures.extend(await stage.persist(partition))
        for r in taken.rejected:
            out.futures.append(await self.send_reject(r, _reject_model(r)))
        self.metrics.events_accepted.labels(topic).inc(out.accepted)
        for r in taken.rejected:
            self.metrics.events_rejected.labels(topic, r.reason).inc()
        return out

    def _learn_row_size(self, rows: pa.Table | None) -> None:
        """The running mean of a row's bytes, from a whole block (what :meth:`_pieces` cuts by)."""
        if rows is not None and rows.num_rows:
            self._bytes_per_row = 0.8 * self._bytes_per_row + 0.2 * (rows.nbytes / rows.num_rows)

    def _pieces(self, rows: pa.Table | None) -> list[pa.Table]:
        """Accepted rows in runs of about :data:`CHUNK_TARGET_BYTES`."""
        if rows is None or not rows.num_rows:
            return []
        per_chunk = max(1, int(CHUNK_TARGET_BYTES / self._bytes_per_row))
        n = rows.num_rows
        size = math.ceil(n / math.ceil(n / per_chunk))
        return [rows.slice(i, size) for i in range(0, n, size)]


def classify_batch(
    source: Source, frames: Frames, prepared: Prepared, decoders: DecoderCache, now_ms: int, worker_id: str | None
) -> Taken:
    """Rows and rejects of a batch (or of joined ones): the batch path for what it proves, :func:`classify` the rest.

    Pure (the decoders are a cache). With ``source.row_rules`` None every record goes
    through :func:`classify`: the definition the batch path is held to.
    """
    position = TABLES[source.table_name].position
    fast = fast_rows(frames, prepared.resolved, decoders, source.row_rules, prepared.schema, position, now_ms)
    taken = Taken(frames, fast.rows, flagged=fast.flagged, proved=0 if fast.rows is None else fast.rows.num_rows)
    if not fast.slow:
        return taken
    out = classify(source.topic, frames.records(fast.slow), prepared.resolved, source.validate, now_ms, worker_id)
    taken.flagged += out.flagged
    taken.rejected = out.rejected
    if out.accepted:
        # What its table cannot hold is a reject before any stage records it as landed.
        table, unfit = rows_to_arrow(lambda evs: source.to_arrow(evs, now_ms, prepared.schema), out.accepted)
        if unfit:
            taken.rejected = sorted([*taken.rejected, *_unfit(unfit, frames, now_ms, worker_id)], key=_position)
        if table is not None:
            taken.rows = table if taken.rows is None else in_log_order(pa.concat_tables([taken.rows, table]), position)
    return taken


def _unfit(
    unfit: Sequence[tuple[BufferedEvent, str]], frames: Frames, now_ms: int, worker_id: str | None
) -> list[RejectRecord]:
    out = []
    for event, why in unfit:
        rec = frames.at(event.partition, event.offset)
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
                worker_id,
                rec.headers if rec is not None else (),
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
