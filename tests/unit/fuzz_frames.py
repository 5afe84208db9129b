"""Mutated Confluent frames of K2's three contracts, and the check every batch of them must pass.

Shared by the property-based test (``test_fuzz.py``, hypothesis) and the coverage-guided
harness (``tests/fuzz/atheris_classify.py``). A generator expands one integer seed into
thousands of frames, so a fuzz run is cheap per frame: a few *base* frames per seed,
structure-aware (a valid record, some fields replaced at the wire level by values the
contract forbids: 64-bit ints, decimals of any size, invalid UTF-8...), then byte-level
mutations of each (bit flips, inserts, deletes, truncation, extension, header and varint
overwrites).

:func:`check_batch` is the law: classify returns every position exactly once, accepted
rows convert to their table, every reject has a known reason and a detail and converts to
the rejects table, and nothing raises.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from k2.app import sources
from k2.avro.codec import MAX_SCHEMA_ID, encode
from k2.avro.schemas import CONTRACTS
from k2.errors import UnknownSchemaId, WrongSubject
from k2.ingest import fast
from k2.ingest.classify import Resolution, Validator, classify
from k2.ingest.fast import DecoderCache
from k2.ingest.frames import Frames, RawRecord, read_framing
from k2.ingest.processor import Prepared, Taken, classify_batch
from k2.lake.arrow import arrow_schema, companies_to_arrow, events_to_arrow, rejects_to_arrow, rows_to_arrow
from k2.lake.records import BufferedEvent
from k2.lake.schemas import COMPANIES, QUOTES, REJECTS, TABLES, TRADES
from k2.settings import Settings
from k2.validation import validate_quote, validate_reference, validate_trade
from tests.unit.avro_wire import encode_wide, unscaled, wide_schema

NOW = 1_750_000_000_000  # 2025-06-15T15:06:40Z
KNOWN_ID, WRONG_SUBJECT_ID, UNKNOWN_ID = 7, 8, 9
REASONS = frozenset({"not_confluent_framed", "unknown_schema_id", "wrong_subject", "undecodable", "invalid_value"})


class _Writer:
    def __init__(self, parsed: Any, schema_str: str) -> None:
        self.parsed = parsed
        self.schema_str = schema_str


@dataclass(frozen=True)
class Target:
    """One contract under test: where its records come from and land."""

    contract: str
    topic: str
    validate: Validator
    build: Callable[[Sequence[BufferedEvent]], pa.Table]
    table: str


TARGETS: dict[str, Target] = {
    "trade": Target("trade", "market.trades.raw", validate_trade, lambda ev: events_to_arrow(TRADES, ev), TRADES),
    "quote": Target("quote", "market.quotes.raw", validate_quote, lambda ev: events_to_arrow(QUOTES, ev), QUOTES),
    "reference_data": Target(
        "reference_data",
        "market.reference_data",
        validate_reference,
        lambda ev: companies_to_arrow(ev, NOW),
        COMPANIES,
    ),
}


def resolutions(contract: str, records: Sequence[RawRecord]) -> dict[int, Resolution]:
    """What the registry would answer for the ids of a batch: the contract, a wrong subject, or unknown."""
    answers: dict[int, Resolution] = {}
    headers = read_framing([r.value for r in records])
    for schema_id in {int(i) for i in headers.schema_ids[headers.framed]}:
        assert schema_id <= MAX_SCHEMA_ID, f"schema_ids() asks the registry about {schema_id:#x}"
        if schema_id == KNOWN_ID:
            answers[schema_id] = _Writer(CONTRACTS[contract].parsed, CONTRACTS[contract].schema_str)
        elif schema_id == WRONG_SUBJECT_ID:
            answers[schema_id] = WrongSubject(f"schema id {schema_id} is registered under another subject")
        else:
            answers[schema_id] = UnknownSchemaId(f"schema id {schema_id} is not in the registry")
    return answers


@dataclass
class Tally:
    """What a fuzz run saw, for its report."""

    frames: int = 0
    accepted: int = 0
    proved: int = 0
    """Of the accepted, those the batch path proved itself (the rest it left to the per-record path)."""
    reasons: dict[str, int] | None = None

    def add(self, accepted: int, reasons: Sequence[str], proved: int = 0) -> None:
        self.accepted += accepted
        self.proved += proved
        self.frames += accepted + len(reasons)
        counts = self.reasons if self.reasons is not None else {}
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        self.reasons = counts


def check_batch(target: Target, records: Sequence[RawRecord], tally: Tally | None = None) -> None:
    """Run a batch through classify, rows_to_arrow(build) and rejects_to_arrow, asserting the law.

    On an exception, the single frame that causes it is found and named, so the failure
    message is a reproducer.
    """
    try:
        _check(target, records, tally)
    except Exception as exc:
        culprit = _culprit(target, records)
        raise AssertionError(f"{target.contract}: {type(exc).__name__}: {exc}; {culprit}") from exc


_SOURCES = {s.topic: s for s in sources(Settings())}


@contextlib.contextmanager
def batch_path_at_any_size() -> Iterator[None]:
    """The batch path taken by batches of any size (a worker takes it from ``MIN_PROVED_BATCH`` records)."""
    saved, fast.MIN_PROVED_BATCH = fast.MIN_PROVED_BATCH, 1
    try:
        yield
    finally:
        fast.MIN_PROVED_BATCH = saved


def check_paths(target: Target, records: Sequence[RawRecord]) -> int:
    """The batch path (:mod:`k2.ingest.fast`) gives exactly the rows, rejects and flags of the per-record path,
    whatever the batch's size (the worker's threshold aside), and so do the partitions' batches joined.

    Returns how many rows the batch path itself proved (the rest it left to the per-record path).
    """
    source = _SOURCES[target.topic]
    prepared = Prepared(resolutions(target.contract, records), arrow_schema(target.table))
    proved = 0
    parts: list[Frames] = []
    expected: list[Taken] = []
    for partition in sorted({r.partition for r in records}):
        frames = Frames.from_records([r for r in records if r.partition == partition])
        one_by_one = classify_batch(replace(source, row_rules=None), frames, prepared, DecoderCache(), NOW, "fuzz")
        with batch_path_at_any_size():
            batched = classify_batch(source, frames, prepared, DecoderCache(), NOW, "fuzz")
        _same(batched, one_by_one, "the batch path")
        assert batched.flagged == one_by_one.flagged
        proved += batched.proved
        parts.append(frames)
        expected.append(one_by_one)
    if len(parts) > 1:
        joined = Frames.join(parts)
        position = TABLES[target.table].position
        for how, joined_source in (("joined, one by one", replace(source, row_rules=None)), ("joined", source)):
            with batch_path_at_any_size():
                whole = classify_batch(joined_source, joined, prepared, DecoderCache(), NOW, "fuzz")
            split = whole.split(parts, position)
            assert [t.frames for t in split] == parts
            for taken, alone in zip(split, expected, strict=True):
                _same(taken, alone, how)
            assert whole.flagged == sum(t.flagged for t in expected), how
    return proved


def _same(taken: Taken, expected: Taken, how: str) -> None:
    if taken.rows is None or expected.rows is None:
        assert taken.rows is None and expected.rows is None, f"{how}: one path accepted rows, the other none"
    else:
        assert taken.rows.equals(expected.rows), f"{how}: {_first_difference(taken.rows, expected.rows)}"
    assert taken.rejected == expected.rejected, f"{how}: the paths rejected differently"


def _first_difference(a: pa.Table, b: pa.Table) -> str:
    if a.num_rows != b.num_rows or a.schema != b.schema:
        return f"{a.num_rows} rows {a.schema} vs {b.num_rows} rows {b.schema}"
    for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)):
        if x != y:
            return f"row {i}: batch path {x} vs per-record path {y}"
    return "tables differ in chunking only"


def _check(target: Target, records: Sequence[RawRecord], tally: Tally | None) -> None:
    out = classify(target.topic, records, resolutions(target.contract, records), target.validate, NOW, "fuzz")
    by_position = {(r.partition, r.offset): r for r in records}
    seen = [(e.partition, e.offset) for e in out.accepted] + [(r.partition, r.offset) for r in out.rejected]
    assert len(seen) == len(records) and set(seen) == by_position.keys(), "a position lost or doubled"
    for r in out.rejected:
        assert r.reason in REASONS, r.reason
        assert isinstance(r.detail, str) and r.detail, f"reject without a detail: {r}"
        raw = by_position[(r.partition, r.offset)]
        assert r.value is raw.value and r.key is raw.key, "reject bytes are not the record's"
        assert r.schema_id is None or 0 <= r.schema_id <= MAX_SCHEMA_ID
    table, failed = rows_to_arrow(target.build, out.accepted)
    assert failed == [], f"accepted rows that do not convert: {failed[:3]}"
    if out.accepted:
        assert table is not None and table.num_rows == len(out.accepted)
        assert table.schema == arrow_schema(target.table)
    rejects = rejects_to_arrow(out.rejected)
    assert rejects.num_rows == len(out.rejected) and rejects.schema == arrow_schema(REJECTS)
    proved = check_paths(target, records)
    if tally is not None:
        tally.add(len(out.accepted), [r.reason for r in out.rejected], proved)


def _culprit(target: Target, records: Sequence[RawRecord]) -> str:
    for rec in records:
        try:
            _check(target, [rec._replace(partition=0, offset=0)], None)
        except Exception as exc:
            value = rec.value
            shown = "None" if value is None else f"{len(value)} bytes {value[:300].hex()}"
            return f"first failing frame alone: {type(exc).__name__}: {exc}; value={shown}; key={rec.key!r:.100}"
    return "no single frame fails alone (the batch does)"


# --- valid records -------------------------------------------------------------------------

_SYMBOLS = ("BHP", "CBA", "A", "ZZZZZZZZ", "Ä1", "NAB.X")


def _price(rng: random.Random, zero_ok: bool) -> Decimal:
    unscaled_value = rng.choice((rng.randrange(1, 10**8), rng.randrange(1, 10**18), 1, 10**18 - 1))
    if zero_ok and rng.random() < 0.2:
        unscaled_value = 0
    return Decimal(unscaled_value).scaleb(-6)


def valid_record(contract: str, rng: random.Random) -> dict[str, Any]:
    """A record of ``contract`` that classify accepts (within the domain rules at :data:`NOW`)."""
    if contract == "reference_data":
        start = date(1900, 1, 1) + timedelta(days=rng.randrange(0, 40_000))
        end = None if rng.random() < 0.7 else start + timedelta(days=rng.randrange(0, 3000))
        return {
            "company_id": rng.randrange(1, 2**31),
            "symbol": rng.choice(_SYMBOLS),
            "company_name": rng.choice(("BHP Group Ltd", "X", "Société Générale", "名前" * 50)),
            "isin": rng.choice(("AU000000BHP4", "")),
            "start_date": start.isoformat(),
            "end_date": None if end is None else end.isoformat(),
        }
    common = {
        "symbol": rng.choice(_SYMBOLS),
        "company_id": rng.randrange(-(2**31), 2**31),
        "exchange": rng.choice(("ASX", "", "CHI-X")),
        "exchange_timestamp": NOW - rng.randrange(0, 10**10),
        "ingestion_timestamp": NOW + rng.randrange(-(10**9), 10**9),
        "sequence_number": None if rng.random() < 0.3 else rng.randrange(-(2**63), 2**63),
    }
    if contract == "trade":
        return {
            **common,
            "price": _price(rng, zero_ok=False),
            "volume": rng.randrange(1, 2**63),
            "qualifiers": rng.randrange(-(2**31), 2**31),
            "venue": rng.choice(("", "X", "CXA")),
            "buyer_id": rng.choice((None, "B1", "")),
        }
    return {
        **common,
        "bid_price": _price(rng, zero_ok=True),
        "bid_volume": rng.randrange(0, 2**63),
        "ask_price": Decimal("36.670000"),
        "ask_volume": rng.randrange(0, 2**63),
    }


# --- wire-level poison: values the contract forbids, written where it expects others --------


def _zigzag(n: int) -> bytes:
    """An Avro varint (zigzag) of a 64-bit ``n``."""
    z = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


LONGS = (0, -1, 1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32, 2**53, 2**62, 2**63 - 1, -(2**63), 10**15)
BYTES = (
    b"",
    b"\x00",
    b"A\x00B",
    b"\xff\xfe\xfd",  # invalid UTF-8
    b"\xed\xa0\x80",  # a UTF-16 surrogate written as UTF-8 (CESU-8)
    b"\xc0\x80",  # overlong NUL
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    "\u200b\n\t".encode(),
    unscaled(10**18 - 1),
    unscaled(10**18),
    unscaled(-(10**18)),
    unscaled(2**63),
    b"\x7f" + bytes(2000),  # a decimal far beyond decimal(18,6), over the 1 KiB guard
    b"\xff" * 40,  # -1 with redundant sign bytes
    b" " * 300,
    b"0000-01-01",
    b"9999-12-31",
    b"2024-02-30",
    "\uff12\uff10\uff12\uff10-01-01".encode(),  # fullwidth digits
)
VARINTS = (
    *(_zigzag(n) for n in (2**62, -(2**62), 2**63 - 1, -(2**63), 2**31, -1, -2, -3, 10**9, 2**20, 10**7)),
    b"\xff" * 10 + b"\x01",  # longer than any 64-bit varint
    b"\x80" * 9 + b"\x00",  # overlong zero
    b"\xff" * 20,  # never terminates
)
HEADER_IDS = (KNOWN_ID, WRONG_SUBJECT_ID, UNKNOWN_ID, 0, MAX_SCHEMA_ID, 0x8000_0000, 0x8000_0002, 0xFFFF_FFFF)
INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0xFE, 0x3F, 0x40)


def _wide_fields(contract: str) -> list[tuple[str, str, bool]]:
    """(name, wire type: "long" or "bytes", optional) of each field of the contract's wide schema."""
    out = []
    for field in wide_schema(contract)["fields"]:
        kind = field["type"]
        optional = isinstance(kind, list)
        wire = kind[-1] if optional else kind
        out.append((field["name"], wire["type"] if isinstance(wire, dict) else wire, optional))
    return out


_FIELDS = {name: _wide_fields(name) for name in CONTRACTS}


def base_frame(contract: str, rng: random.Random, poison: float) -> bytes:
    """A framed record of ``contract``: valid, or with some fields replaced by wire-level poison."""
    record: dict[str, Any] = valid_record(contract, rng)
    if rng.random() >= poison:
        return encode(KNOWN_ID, CONTRACTS[contract].parsed, record)
    for name, kind, optional in rng.sample(_FIELDS[contract], rng.randint(1, 3)):
        if optional and rng.random() < 0.2:
            record[name] = None
        elif kind == "long":
            record[name] = rng.choice(LONGS) if rng.random() < 0.8 else rng.randrange(-(2**63), 2**63)
        elif rng.random() < 0.8:
            record[name] = rng.choice(BYTES)
        else:
            record[name] = rng.randbytes(rng.randrange(0, 24))
    return encode_wide(KNOWN_ID, contract, record)


# --- byte-level mutation -------------------------------------------------------------------


def mutate(frame: bytes, rng: random.Random, count: int) -> bytes:
    """``frame`` with ``count`` random byte-level mutations (see the module docstring)."""
    b = bytearray(frame)
    for _ in range(count):
        kind = rng.randrange(10)
        n = len(b)
        if not n:
            b += rng.randbytes(rng.randint(1, 8))
            continue
        i = rng.randrange(n)
        if kind == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b[i] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif kind == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3:
            del b[i : i + rng.randint(1, 8)]
        elif kind == 4:
            del b[rng.randrange(n + 1) :]
        elif kind == 5:
            b += rng.randbytes(rng.randint(1, 16)) if rng.random() < 0.5 else bytes(rng.randint(1, 16))
        elif kind == 6:
            if rng.random() < 0.3:
                b[0] = rng.choice((1, 0xFF, 0x7B, 0x80))
            else:
                schema_id = rng.choice(HEADER_IDS) if rng.random() < 0.8 else rng.getrandbits(32)
                b[1:5] = schema_id.to_bytes(4, "big")
        elif kind in (7, 8):
            start = rng.randrange(min(5, n), n + 1)
            v = rng.choice(VARINTS)
            b[start : start + (len(v) if kind == 7 else 0)] = v
        else:
            b[i] = b[rng.randrange(n)]  # a byte copied from elsewhere (a length from a value...)
    return bytes(b)


_KEYS = (None, b"", b"BHP", b"\x00\xff", bytes(300))


def frames(
    contract: str, seed: int, count: int, max_mutations: int, poison: float, mutated: float = 0.875
) -> list[RawRecord]:
    """``count`` records of ``contract`` expanded from ``seed``: mutants of a few base frames.

    A share ``mutated`` of them is mutated (the rest valid or poisoned only): a batch mostly
    of mutants tests the per-record path, one with a few mutants among valid frames the batch
    path, which must isolate them. Partitions 0-2, offsets rising per partition, as a batch
    from Kafka comes.
    """
    rng = random.Random(seed)
    bases = [base_frame(contract, rng, poison) for _ in range(16)]
    out: list[RawRecord] = []
    offsets = [0, 0, 0]
    for i in range(count):
        base = bases[i & 15]
        value: bytes | None = mutate(base, rng, rng.randint(0, max_mutations)) if rng.random() < mutated else base
        if i % 997 == 0:
            value = rng.choice((None, b"", b"\x00", bytes(5)))  # tombstones, 0-byte and header-only frames
        partition = i % 3
        out.append(RawRecord(partition, offsets[partition], _KEYS[i % 5], value, NOW))
        offsets[partition] += 1
    return out
