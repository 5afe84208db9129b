"""What one fetch returned for a source topic: the unit K2's ingest agents receive from Faust.

Faust delivers a topic's records one by one (consumer -> conductor -> channel -> stream:
a message, an event and several awaits each), which caps a worker near 10k events/s
whatever the settings. For K2's raw source topics the consumer instead hands over what
one fetch returned for the topic as one :class:`TopicFetch` (a :class:`FetchedBatch` per
partition), wrapped in a single faust message, so Faust's conductor, streams, agents and
sensors still carry it. A live fetch holds tens of records per partition: one message per
topic, not per partition, lets the pipeline classify them in one block. A fetch after a
stall holds up to ``K2_INGEST_BATCH_MAX`` records, and one block of them holds the event
loop (timers, flushes, the other agents) for as long as it takes: the pipeline cuts it
into :meth:`TopicFetch.blocks` of at most ``K2_INGEST_BLOCK_MAX`` and yields between them.

A batch knows the consumer's *position* before and after the fetch (``start``, ``end``:
the offset the next fetch begins at), not only its records' offsets. Records of one fetch
are contiguous in the log from ``start``, but offsets may skip (compaction, transaction
markers), so only positions tell "the log has nothing there" from "a batch went missing
on the way": the pipeline accepts a batch only if it starts where the last one ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, AppT
from faust.types.tuples import Message

__all__ = ["BATCH_SCHEMA", "BatchSchema", "FetchedBatch", "TopicFetch", "fetch_message"]


@dataclass(frozen=True)
class FetchedBatch:
    """What one fetch returned for one source partition, and where the consumer stood around it."""

    tp: TP
    start: int
    """The partition's position before the fetch: the offset the log is read from."""
    end: int
    """The position after it: where the next batch of this partition must start."""
    records: Sequence[Any]
    """aiokafka ``ConsumerRecord``s, in offset order (``offset``, ``key``, ``value``, ``timestamp``)."""
    generation: int
    """The consumer group generation the fetch belongs to (a batch of an older one is stale)."""

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition

    def __len__(self) -> int:
        return len(self.records)

    def pieces(self, most: int) -> list[FetchedBatch]:
        """The batch cut into consecutive batches of at most ``most`` records (itself if it holds no more).

        Each piece ends where the next begins: at the next piece's first record, so what lies
        between (transaction markers, compacted offsets) belongs to the piece before it, and
        the last piece ends where the batch did. Taken one after another, the pieces are the
        batch: the ledger admits each because it starts where the one before ended.
        """
        if most < 1:
            raise ValueError(f"a piece holds at least one record; got most={most}")
        if len(self.records) <= most:
            return [self]
        cuts = range(0, len(self.records), most)
        starts = [self.start, *(self.records[i].offset for i in cuts[1:])]
        ends = [*starts[1:], self.end]
        return [
            FetchedBatch(self.tp, start, end, self.records[i : i + most], self.generation)
            for i, start, end in zip(cuts, starts, ends, strict=True)
        ]


@dataclass(frozen=True)
class TopicFetch:
    """What one fetch returned for the partitions of one source topic: a batch per partition, ascending."""

    batches: tuple[FetchedBatch, ...]

    def __post_init__(self) -> None:
        partitions = [b.partition for b in self.batches]
        if not partitions or partitions != sorted(set(partitions)) or len({b.topic for b in self.batches}) != 1:
            raise ValueError(f"a topic's fetch holds batches of distinct partitions, ascending; got {partitions}")

    @property
    def topic(self) -> str:
        return self.batches[0].topic

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    def blocks(self, most: int) -> list[TopicFetch]:
        """The fetch cut into fetches of at most ``most`` records, in order, for the loop to breathe between.

        A block holds whole batches while they fit; a batch of more than ``most`` records is
        cut into :meth:`~FetchedBatch.pieces`, so no block holds more than ``most`` records
        (batches without records count as none). A partition's pieces fall in consecutive
        blocks, in offset order, one per block.
        """
        out: list[TopicFetch] = []
        block: list[FetchedBatch] = []
        size = 0
        for batch in self.batches:
            for piece in batch.pieces(most):
                if block and size + len(piece) > most:
                    out.append(TopicFetch(tuple(block)))
                    block, size = [], 0
                block.append(piece)
                size += len(piece)
        out.append(TopicFetch(tuple(block)))
        return out


def fetch_message(fetch: TopicFetch) -> Message:
    """The faust message that carries ``fetch``: its first batch's partition, at the offset of that batch's last record.

    The offset is what faust's fetch loop compares with its read offset of that partition to
    drop messages from before a seek, so it must not fall behind the batch's records. An empty
    batch (the consumer moved past transaction markers) travels at the offset before its end.
    The other partitions' batches are not checked there: the ledger takes a batch only if it
    starts where that partition's last one ended (:mod:`k2.pipeline.ledger`).
    """
    from faust.types.tuples import ConsumerMessage

    first = fetch.batches[0]
    if first.records:
        last = first.records[-1]
        offset, ts, ts_type = last.offset, last.timestamp, last.timestamp_type
    else:  # the position moved past offsets holding no record K2 reads (transaction markers)
        offset, ts, ts_type = first.end - 1, None, 0
    return ConsumerMessage(
        first.tp.topic,
        first.tp.partition,
        offset,
        ts / 1000.0 if ts is not None else 0.0,
        ts_type,
        None,
        None,
        fetch,  # type: ignore[arg-type]  # faust types the value as bytes; here it is the fetch
        None,
        0,
        sum(r.serialized_value_size for b in fetch.batches for r in b.records),
        first.tp,
        generation_id=first.generation,
    )


class BatchSchema(faust.Schema):
    """Passes a :class:`TopicFetch` through faust's decoding untouched (no key, no serializer)."""

    def loads_key(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return None

    def loads_value(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value


BATCH_SCHEMA = BatchSchema()
