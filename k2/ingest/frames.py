"""Fetched batches as columns: what classification reads.

The consumer hands over aiokafka records; the hot path needs their values as one list (to
decode them in a block), and a single record only for the few events that go one by one
(rejects, events the batch decoder leaves to the codec), so both shapes are here.

A live fetch gives each partition tens of records, and each batch classified alone pays the
same fixed calls; so the batches of one topic's partitions from one fetch are classified
*joined* (:meth:`Frames.join`): one block per fetch, in (partition, offset) order, each
record knowing its partition. What they become is then split by partition again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

__all__ = ["JOINED", "FrameHeaders", "Frames", "Headers", "RawRecord", "read_framing"]

_HEADER = 5  # the Confluent header: magic byte 0, then the schema id (4 bytes, big-endian)


@dataclass(frozen=True)
class FrameHeaders:
    """The Confluent header of every frame of a batch, read in one pass."""

    framed: np.ndarray
    """Per frame: a value of at least the header's length, magic byte 0, a schema id below 2**31."""
    schema_ids: np.ndarray
    """Per frame: the header's schema id (meaningless where not ``framed``)."""
    sizes: np.ndarray
    """Per frame: the value's length (0 for a tombstone)."""


def read_framing(values: Sequence[bytes | None]) -> FrameHeaders:
    """The headers of ``values``, in numpy arrays (one slice per value, the rest vectorised)."""
    n = len(values)
    sizes = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=n)
    whole = sizes >= _HEADER
    heads = np.zeros((n, _HEADER), dtype=np.uint8)
    if whole.all():
        heads[:] = np.frombuffer(b"".join([v[:_HEADER] for v in values]), dtype=np.uint8).reshape(n, _HEADER)  # type: ignore[index]
    else:
        for i in np.flatnonzero(whole).tolist():
            heads[i] = np.frombuffer(values[i][:_HEADER], dtype=np.uint8)  # type: ignore[index]
    ids = heads[:, 1:].astype(np.int64)
    schema_ids = (ids[:, 0] << 24) | (ids[:, 1] << 16) | (ids[:, 2] << 8) | ids[:, 3]
    framed = whole & (heads[:, 0] == 0) & (heads[:, 1] < 0x80)
    return FrameHeaders(framed, schema_ids, sizes)


Headers = tuple[tuple[str, bytes], ...]
"""Kafka record headers, in order (keys may repeat)."""


class RawRecord(NamedTuple):
    """One Kafka record as consumed: position, and the key, value and headers untouched."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()


JOINED = -1
"""The :attr:`Frames.partition` of frames that join several partitions' batches (no partition is -1)."""


@dataclass(frozen=True)
class Frames:
    """The records of one partition's batch, in offset order, column by column; or of several, joined."""

    partition: int
    """The partition of every record, or :data:`JOINED` (then :attr:`partitions` says, per record)."""
    offsets: Sequence[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    timestamps: Sequence[int]
    headers: Sequence[Headers] = ()
    """Per record (empty when the batch carries none)."""
    partitions: Sequence[int] = ()
    """Per record, in ascending order, when the frames join several partitions' batches (else empty)."""

    @classmethod
    def of(cls, partition: int, records: Sequence[Any]) -> Frames:
        """From aiokafka ``ConsumerRecord``s of one partition (``offset``, ``key``, ``value``, ``timestamp``)."""
        return cls(
            partition,
            [r.offset for r in records],
            [r.key for r in records],
            [r.value for r in records],
            [r.timestamp or 0 for r in records],
            [tuple(r.headers) if r.headers else () for r in records],
        )

    @classmethod
    def from_records(cls, records: Sequence[RawRecord]) -> Frames:
        """From :class:`RawRecord`s of one partition (tests, tools)."""
        partitions = {r.partition for r in records}
        if len(partitions) > 1:
            raise ValueError(f"a batch holds one partition, got {sorted(partitions)}")
        return cls(
            partitions.pop() if partitions else 0,
            [r.offset for r in records],
            [r.key for r in records],
            [r.value for r in records],
            [r.timestamp_ms for r in records],
            [r.headers for r in records],
        )

    @classmethod
    def join(cls, parts: Sequence[Frames]) -> Frames:
        """One block of the batches of distinct partitions, in ascending partition order (one part: itself)."""
        if len(parts) == 1:
            return parts[0]
        order = [f.partition for f in parts]
        if JOINED in order or order != sorted(set(order)):
            raise ValueError(f"frames join batches of distinct partitions in ascending order, got {order}")
        with_headers = any(f.headers for f in parts)
        return cls(
            JOINED,
            [o for f in parts for o in f.offsets],
            [k for f in parts for k in f.keys],
            [v for f in parts for v in f.values],
            [t for f in parts for t in f.timestamps],
            [h for f in parts for h in (f.headers or [()] * len(f))] if with_headers else (),
            [f.partition for f in parts for _ in range(len(f))],
        )

    def __len__(self) -> int:
        return len(self.offsets)

    def partition_of(self, i: int) -> int:
        """The partition of the ``i``-th record."""
        return self.partitions[i] if self.partition == JOINED else self.partition

    def partition_array(self) -> np.ndarray:
        """Every record's partition (int64)."""
        if self.partition == JOINED:
            return np.asarray(self.partitions, dtype=np.int64)
        return np.full(len(self), self.partition, dtype=np.int64)

    @cached_property
    def framing(self) -> FrameHeaders:
        """Every frame's Confluent header (read once per batch)."""
        return read_framing(self.values)

    def schema_ids(self) -> set[int]:
        """The schema ids the well-framed values name: what to resolve before classifying.

        Ids above :data:`~k2.avro.codec.MAX_SCHEMA_ID` (high bit set) are left out: no registry
        can know them, so asking would only cost a round trip; classification rejects them.
        """
        h = self.framing
        return {int(i) for i in np.unique(h.schema_ids[h.framed])}

    def record(self, i: int) -> RawRecord:
        """The ``i``-th record."""
        headers = self.headers[i] if self.headers else ()
        partition = self.partition_of(i)
        return RawRecord(partition, self.offsets[i], self.keys[i], self.values[i], self.timestamps[i], headers)

    def records(self, indices: Iterable[int] | None = None) -> list[RawRecord]:
        """The records at ``indices`` (all, in order, when None)."""
        wanted = range(len(self)) if indices is None else indices
        return [self.record(i) for i in wanted]

    def at_offset(self, offset: int) -> RawRecord | None:
        """The record at ``offset``, if the batch holds it (one partition's: offsets are ascending)."""
        if self.partition == JOINED:
            raise ValueError("joined frames hold several partitions: ask at(partition, offset)")
        return self.at(self.partition, offset)

    def at(self, partition: int, offset: int) -> RawRecord | None:
        """The record at ``(partition, offset)``, if the frames hold it."""
        low, high = 0, len(self.offsets)
        if self.partition == JOINED:
            low = bisect.bisect_left(self.partitions, partition)
            high = bisect.bisect_right(self.partitions, partition, low)
        elif partition != self.partition:
            return None
        i = bisect.bisect_left(self.offsets, offset, low, high)
        if i < high and self.offsets[i] == offset:
            return self.record(i)
        return None
