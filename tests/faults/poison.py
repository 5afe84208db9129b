"""Malformed frames, and a mixer that hides them at seeded positions of a real replay.

Every kind of damage a feed can carry: random bytes, a wrong magic byte, a schema id with
the high bit set (0x80000002: negative as a signed int, out of range of an int column),
truncated bodies, valid frames with one flipped bit, 0-byte values, tombstones (no value
at all) and a few 1 MB values. Each frame carries what the law expects of it: ``reject``
(it cannot decode, so it must land in the rejects with its bytes untouched) or ``either``
(a flipped bit that still decodes to a plausible record: a market row with exactly those
values, or a reject).

The mixer works on a replay already in Kafka (staging topics written by ``k2 replay``):
per target partition it interleaves the replay's records, in their order, with poison
at positions drawn from the seed, so a failure names offsets that the same seed
reproduces. Damaged copies of a record (flipped, truncated) always come *after* their
original in the same partition: a copy ahead of its original would make the original the
duplicate, and the check could no longer say which of the two must land.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from tests.faults.source import TP, Position, Registry, SourceRecord, make_producer

__all__ = [
    "HUGE_VALUE_BYTES",
    "KINDS",
    "Mixed",
    "Outgoing",
    "Poison",
    "PoisonGenerator",
    "mix",
    "produce",
]

#: A "1 MB" value: as large as the broker's default record-batch limit (1,048,588 bytes) allows.
HUGE_VALUE_BYTES = 1_000_000

#: Poison kinds and their share of a flood (1 MB values come in a fixed, small number).
KINDS: Mapping[str, float] = {
    "random_bytes": 0.20,
    "wrong_magic": 0.14,
    "high_bit_schema_id": 0.14,
    "truncated": 0.16,
    "flipped_bit": 0.16,
    "empty_value": 0.10,
    "tombstone": 0.10,
}

_KEYS = (b"BHP", b"DVN", b"MWR", b"RIO", b"ZZZ")


@dataclass(frozen=True)
class Poison:
    """One malformed frame and what the law expects of it (``reject`` or ``either``)."""

    kind: str
    key: bytes | None
    value: bytes | None
    expect: str


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: a replayed one (``poison`` None) or poison, in mixer order."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    poison: Poison | None
    order: float


class PoisonGenerator:
    """Makes poison frames for a topic, from the seed and the topic's real frames."""

    def __init__(
        self, rng: random.Random, registry: Registry, subjects: Mapping[str, str], *, high_bit_ids: bool = True
    ) -> None:
        """``high_bit_ids=False``: no frame of any kind starts with magic 0 and a schema id >= 2^31 (random
        bytes and flipped bits make some by chance), so the other kinds can be judged on their own."""
        self.rng = rng
        self.high_bit_ids = high_bit_ids
        self.registry = registry
        self.subjects = dict(subjects)
        self.schema_ids = {topic: registry.latest(subject)[0] for topic, subject in subjects.items()}

    def make(self, kind: str, topic: str, originals: Sequence[SourceRecord]) -> Poison:
        """A frame of ``kind`` for ``topic``; damaged copies start from one of ``originals`` (earlier records)."""
        for _ in range(64):
            poison = self._make(kind, topic, originals)
            if self.high_bit_ids or not _high_bit_frame(poison.value):
                return poison
        raise RuntimeError(f"could not make a {kind} frame without a high-bit schema id")

    def _make(self, kind: str, topic: str, originals: Sequence[SourceRecord]) -> Poison:
        rng = self.rng
        original = rng.choice(originals) if originals else None
        frame = original.value if original is not None and original.value else None
        key = original.key if original is not None else rng.choice(_KEYS)
        header_id = self.schema_ids[topic].to_bytes(4, "big")
        value: bytes | None
        if kind == "random_bytes":
            value = rng.randbytes(rng.randint(1, 200))
        elif kind == "wrong_magic":
            body = frame[5:] if frame else rng.randbytes(60)
            value = bytes([rng.randint(1, 255)]) + header_id + body
        elif kind == "high_bit_schema_id":
            schema_id = rng.choice((0x80000002, 0x80000000, 0xFFFFFFFF, 0x80000000 | rng.randrange(1, 2**31)))
            body = frame[5:] if frame else rng.randbytes(60)
            value = b"\x00" + schema_id.to_bytes(4, "big") + body
        elif kind == "truncated" and frame:
            value = frame[: rng.randint(1, len(frame) - 1)]
        elif kind == "flipped_bit" and frame and original is not None:
            return self._flipped(topic, original, frame)
        elif kind in ("truncated", "flipped_bit"):  # nothing earlier in this partition to damage
            kind, value = "random_bytes", rng.randbytes(rng.randint(1, 200))
        elif kind == "empty_value":
            value = b""
        elif kind == "tombstone":
            value = None
        elif kind == "huge":
            if rng.random() < 0.5:
                value = b"\x00" + header_id + rng.randbytes(HUGE_VALUE_BYTES - 5)
            else:
                value = rng.randbytes(HUGE_VALUE_BYTES)
        else:
            raise ValueError(f"unknown poison kind {kind!r}")
        expect = "reject" if self.registry.decode(value, self.subjects[topic]) is None else "either"
        return Poison(kind, key, value, expect)

    def _flipped(self, topic: str, original: SourceRecord, frame: bytes) -> Poison:
        """One bit flipped anywhere in the frame. A copy that still decodes must keep the original's
        instrument and sequence number, so it can only be the original's duplicate or conflict (or, past
        the dedup window, an out-of-order row), never steal the number of a record still to come."""
        subject = self.subjects[topic]
        first = self.registry.decode(frame, subject)
        fallback: bytes | None = None
        for _ in range(32):
            bit = self.rng.randrange(len(frame) * 8)
            damaged = bytearray(frame)
            damaged[bit // 8] ^= 1 << (bit % 8)
            decoded = self.registry.decode(bytes(damaged), subject)
            if decoded is None:
                fallback = bytes(damaged)
                if self.rng.random() < 0.5:
                    return Poison("flipped_bit", original.key, fallback, "reject")
                continue
            same = first is not None and all(
                decoded.record.get(k) == first.record.get(k) for k in ("symbol", "exchange", "sequence_number")
            )
            if same:
                return Poison("flipped_bit", original.key, bytes(damaged), "either")
        if fallback is not None:
            return Poison("flipped_bit", original.key, fallback, "reject")
        return Poison("truncated", original.key, frame[:-1], "reject")


def _high_bit_frame(value: bytes | None) -> bool:
    """Whether ``value`` reads as magic 0 and a schema id >= 2^31."""
    return value is not None and len(value) >= 5 and value[0] == 0 and value[1] >= 0x80


@dataclass
class Mixed:
    """What the mixer produced: where each poison frame landed in Kafka, and how many of each kind."""

    poison_at: dict[Position, Poison] = field(default_factory=dict)
    replayed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def expectations(self) -> dict[Position, str]:
        return {pos: p.expect for pos, p in self.poison_at.items()}


def mix(
    staged: Mapping[TP, Sequence[SourceRecord]],
    targets: Mapping[str, str],
    poisoned_topics: Sequence[str],
    count: int,
    huge: int,
    generator: PoisonGenerator,
    partitions: Mapping[str, int],
    weights: Mapping[str, float] = KINDS,
) -> list[Outgoing]:
    """The replay's records (staged topic -> target topic, same partition, same order) with ``count``
    poison frames, ``huge`` of them 1 MB, spread at random over the partitions of ``poisoned_topics``
    (target names), their kinds drawn with ``weights``. Records of other topics (reference data) go
    first, unmixed."""
    rng = generator.rng
    out: list[Outgoing] = []
    by_target: dict[TP, list[SourceRecord]] = {}
    for (topic, partition), records in staged.items():
        target = targets[topic]
        by_target[(target, partition)] = sorted(records, key=lambda r: r.offset)
        if target not in poisoned_topics:
            out += [Outgoing(target, partition, r.key, r.value, None, -1.0) for r in by_target[(target, partition)]]
    slots = [(t, p) for t in poisoned_topics for p in range(partitions[t])]
    per_slot = Counter(rng.choices(range(len(slots)), k=count))
    huge_per_slot = Counter(rng.choices(range(len(slots)), k=huge))
    kinds, shares = list(weights), list(weights.values())
    for index, (topic, partition) in enumerate(slots):
        good = by_target.get((topic, partition), [])
        n = per_slot[index]
        total = len(good) + n
        poison_slots = set(rng.sample(range(total), n))
        huge_slots = set(rng.sample(sorted(poison_slots), min(huge_per_slot[index], n)))
        emitted: list[SourceRecord] = []
        g = 0
        for slot in range(total):
            order = slot / max(total, 1)
            if slot in poison_slots:
                kind = "huge" if slot in huge_slots else rng.choices(kinds, shares)[0]
                poison = generator.make(kind, topic, emitted)
                out.append(Outgoing(topic, partition, poison.key, poison.value, poison, order))
            else:
                record = good[g]
                g += 1
                emitted.append(record)
                out.append(Outgoing(topic, partition, record.key, record.value, None, order))
    out.sort(key=lambda o: o.order)  # stable: per-partition order is kept
    return out


def produce(bootstrap: str, records: Sequence[Outgoing], rate: float | None = None, timeout_s: float = 300.0) -> Mixed:
    """Produce ``records`` in order (idempotent: each partition's order is the list's); at most ``rate``/s.

    Raises ``RuntimeError`` when a record is not delivered: the scenario's input would be unknown.
    """
    producer = make_producer(bootstrap)
    mixed = Mixed()
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message, item: Outgoing) -> None:
        if err is not None:
            failures.append(f"{item.topic}/{item.partition}: {err}")
            return
        if item.poison is not None:
            mixed.poison_at[(msg.topic(), msg.partition(), msg.offset())] = item.poison
            mixed.kinds[item.poison.kind] += 1
        else:
            mixed.replayed += 1

    started = time.monotonic()
    for i, item in enumerate(records):
        while True:
            try:
                producer.produce(
                    item.topic,
                    value=item.value,
                    key=item.key,
                    partition=item.partition,
                    on_delivery=lambda err, msg, item=item: delivered(err, msg, item),
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
            if rate:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    left = producer.flush(timeout_s)
    if left or failures:
        raise RuntimeError(f"poison mixer: {left} record(s) undelivered, failures: {failures[:5]}")
    return mixed
