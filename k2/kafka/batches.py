"""A fetched batch of one source partition: the unit K2's ingest agents receive from Faust.

Faust delivers a topic's records one by one (consumer -> conductor -> channel -> stream:
a message, an event and several awaits each), which caps a worker near 10k events/s
whatever the settings. For K2's raw source topics the consumer instead hands over what
one fetch returned for a partition as one :class:`FetchedBatch`, wrapped in a single
faust message, so Faust's conductor, streams, agents and sensors still carry it.

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

__all__ = ["BATCH_SCHEMA", "BatchSchema", "FetchedBatch", "batch_message"]


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


def batch_message(batch: FetchedBatch) -> Message:
    """The faust message that carries ``batch``: offset of its last record, value the batch itself.

    The offset is what faust's fetch loop compares with its read offset to drop messages
    from before a seek, so it must not fall behind the batch's records. An empty batch (the
    consumer moved past transaction markers) travels at the offset before its end.
    """
    from faust.types.tuples import ConsumerMessage

    if batch.records:
        last = batch.records[-1]
        offset, ts, ts_type = last.offset, last.timestamp, last.timestamp_type
    else:  # the position moved past offsets holding no record K2 reads (transaction markers)
        offset, ts, ts_type = batch.end - 1, None, 0
    return ConsumerMessage(
        batch.tp.topic,
        batch.tp.partition,
        offset,
        ts / 1000.0 if ts is not None else 0.0,
        ts_type,
        None,
        None,
        batch,  # type: ignore[arg-type]  # faust types the value as bytes; here it is the batch
        None,
        0,
        sum(r.serialized_value_size for r in batch.records),
        batch.tp,
        generation_id=batch.generation,
    )


class BatchSchema(faust.Schema):
    """Passes a :class:`FetchedBatch` through faust's decoding untouched (no key, no serializer)."""

    def loads_key(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return None

    def loads_value(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value


BATCH_SCHEMA = BatchSchema()
