"""Many Confluent-framed values of one writer schema decoded at once, into Arrow columns.

fastavro reads one record per call into a dict (about 6 µs each on a quiet core, before
any Arrow is built); a worker that should land tens of thousands of events per second
cannot afford that per event. polars' Avro reader (Rust) decodes a whole Avro object
container block in one call, straight into columns, at about a microsecond per record.
So a batch's bodies are wrapped into one in-memory container block (header with the
writer schema, one data block) and read by polars.

Its reader trusts the block: it does not say where each record ended, it ignores bytes
left after the last record, and it reads an Avro ``int`` wider than 32 bits as a wrapped
value. The per-record codec (:func:`k2.avro.codec.decode`) refuses all of those. To keep
exactly the codec's verdicts, the block is built so that every record is *proved*:

* **framing**: each body is followed by a sentinel of 8 random bytes, drawn anew for every
  call and read back as a trailing ``fixed`` field of the record. A body with trailing
  bytes, or one cut short, makes the reader consume the wrong number of bytes, so its
  sentinel does not read back (a producer cannot guess 64 random bits). Records up to the
  first mismatch are proved; the rest of the block is decoded again without them.
* **ranges**: ``int`` fields are read as ``long`` (the same wire bytes) and checked to fit
  32 bits; decimals are checked against their precision.
* **errors**: a block the reader refuses (invalid UTF-8, a negative length...) is split in
  halves, read again, until the failing records are isolated in small runs left to the codec;
  a batch spends at most a few dozen failed reads this way (a poison flood goes to the codec).
  polars reports some of those failures as a Rust panic, which also prints a line on
  standard error.

Only flat schemas are read this way: fields of one primitive type (temporal logical types
read as their integer, decimals on ``bytes``), or such a type in a union with null. The
caller sends every record that is not proved (:attr:`Decoded.rest`) through the per-record
codec, which decides what it is.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from k2.avro.codec import HEADER_SIZE, TEMPORAL_LOGICAL_TYPES

__all__ = ["MIN_BATCH", "BatchDecoder", "Decoded"]

MIN_BATCH = 32
"""Fewer records than this are decoded one by one: a polars call costs about as much as 30 fastavro reads."""

_SPLIT_BELOW = 16
"""A failing run of fewer records than this goes to the per-record codec instead of being split again."""
_FAILURES = 24
"""Failed reads one batch may cost before the rest of it goes to the per-record codec (a poison flood)."""
_SENTINEL_FIELD = "__k2_sentinel"
_SENTINEL_SIZE = 8
_SYNC = b"K2-batch-decoder"  # the container's sync marker: 16 bytes, written after the header and the block
_PRIMITIVES = frozenset({"string", "bytes", "int", "long", "float", "double", "boolean"})
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_MAX_DECIMAL_PRECISION = 18
"""Wider decimals go through the per-record codec (their range check here reads the unscaled value as an int64)."""


def _zigzag(n: int) -> bytes:
    """Avro's ``long`` encoding (zigzag varint)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True)
class _Field:
    name: str
    base: str
    """What is on the wire: ``string``, ``bytes``, ``long`` (an ``int`` too), ``float``, ``double`` or ``decimal``."""
    avro_type: Any
    """The type polars is told to read (the writer's, ``int`` as ``long``, temporal annotations dropped)."""
    nullable: bool
    null_first: bool
    """For a union with null: whether null is its first branch (the index that means null is 0)."""
    int32: bool
    """Declared ``int``: read as ``long``, must fit 32 bits."""
    decimal_limit: int | None
    """Declared decimal: the unscaled value must be below this in magnitude (10 ** precision)."""


def _plan_field(field: Any) -> _Field | None:
    """How one top-level field is read, or None when it is not flat (see the module docstring)."""
    if not isinstance(field, dict) or not isinstance(field.get("name"), str) or field["name"] == _SENTINEL_FIELD:
        return None
    kind = field.get("type")
    branches = kind if isinstance(kind, list) else [kind]
    others = [b for b in branches if b != "null"]
    if len(others) != 1 or len(branches) > 2:
        return None
    branch = others[0]
    base = branch.get("type") if isinstance(branch, dict) else branch
    if base not in _PRIMITIVES:
        return None
    logical = branch.get("logicalType") if isinstance(branch, dict) else None
    decimal_limit = None
    read: Any = "long" if base == "int" else base
    wire = "long" if base == "int" else base
    if logical == "decimal" and isinstance(branch, dict):
        precision, scale = branch.get("precision"), branch.get("scale", 0)
        if base != "bytes" or type(precision) is not int or type(scale) is not int:
            return None
        if not 0 < precision <= _MAX_DECIMAL_PRECISION or not 0 <= scale <= precision:
            return None
        read = {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}
        decimal_limit = 10**precision
        wire = "decimal"
    elif logical is not None and logical not in TEMPORAL_LOGICAL_TYPES:
        return None  # uuid and friends: fastavro converts them, polars would not
    nullable = len(branches) == 2
    null_first = nullable and branches[0] == "null"
    return _Field(field["name"], wire, read, nullable, null_first, base == "int", decimal_limit)


def _read_type(f: _Field) -> Any:
    if not f.nullable:
        return f.avro_type
    return ["null", f.avro_type] if f.null_first else [f.avro_type, "null"]


@dataclass(frozen=True)
class Decoded:
    """What one :meth:`BatchDecoder.decode` proved, and what it leaves to the per-record codec."""

    table: pa.Table
    """The proved records' fields: strings and bytes as ``large_`` kinds, ``int`` as int64, temporal
    types as their integer, decimals as decimal128."""
    rows: np.ndarray
    """For each row of :attr:`table`, its index in the values given (ascending)."""
    rest: list[int]
    """Indices of the values not proved (ascending): decode those one by one."""


class BatchDecoder:
    """Decodes the bodies of one flat writer schema in blocks (see the module docstring)."""

    def __init__(self, fields: Sequence[_Field], record_name: str) -> None:
        self.fields = tuple(fields)
        schema = {
            "type": "record",
            "name": record_name,
            "fields": [{"name": f.name, "type": _read_type(f)} for f in self.fields]
            + [{"name": _SENTINEL_FIELD, "type": {"type": "fixed", "name": "K2Sentinel", "size": _SENTINEL_SIZE}}],
        }
        meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": b"null"}
        header = bytearray(b"Obj\x01")
        header += _zigzag(len(meta))
        for key, value in meta.items():
            header += _zigzag(len(key)) + key.encode() + _zigzag(len(value)) + value
        header += _zigzag(0) + _SYNC
        self._header = bytes(header)

    @classmethod
    def for_schema(cls, schema_str: str) -> BatchDecoder | None:
        """A decoder for a writer schema (JSON text), or None when the schema is not flat."""
        try:
            tree = json.loads(schema_str)
        except ValueError:
            return None
        if not isinstance(tree, dict) or tree.get("type") != "record" or not isinstance(tree.get("fields"), list):
            return None
        fields = [_plan_field(f) for f in tree["fields"]]
        if not fields or any(f is None for f in fields):
            return None
        names = [f.name for f in fields if f is not None]
        if len(set(names)) != len(names):
            return None
        return cls([f for f in fields if f is not None], "K2Batch")

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode Confluent-framed ``values`` (header already checked by the caller) as far as they are proved."""
        tables: list[pa.Table] = []
        rows: list[np.ndarray] = []
        rest: list[int] = []
        self._decode_run(values, 0, len(values), tables, rows, rest, [_FAILURES])
        rest.sort()
        if not tables:
            return Decoded(self._empty(), np.empty(0, np.int64), rest)
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        index = np.concatenate(rows) if len(rows) > 1 else rows[0]
        return Decoded(table, index, rest)

    def _empty(self) -> pa.Table:
        return pa.table({f.name: pa.array([], pa.null()) for f in self.fields})

    def _decode_run(
        self,
        values: Sequence[bytes],
        lo: int,
        hi: int,
        tables: list[pa.Table],
        rows: list[np.ndarray],
        rest: list[int],
        budget: list[int],
    ) -> None:
        while lo < hi:
            sentinel = os.urandom(_SENTINEL_SIZE)
            bodies = [v[HEADER_SIZE:] for v in values[lo:hi]]
            data = sentinel.join(bodies) + sentinel
            try:
                table = self._read(data, hi - lo)
            except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, ValueError):
                # Some record is not what its schema says (invalid UTF-8, a bad length...): halves are
                # read again until runs are small, or the batch's budget of failed reads is spent; what
                # is left is for the per-record codec, which says which record and why.
                budget[0] -= 1
                if hi - lo < _SPLIT_BELOW or budget[0] <= 0:
                    rest.extend(range(lo, hi))
                    return
                middle = (lo + hi) // 2
                self._decode_run(values, lo, middle, tables, rows, rest, budget)
                self._decode_run(values, middle, hi, tables, rows, rest, budget)
                return
            marks = table.column(_SENTINEL_FIELD)
            proved = pc.equal(marks, pa.scalar(sentinel, marks.type)).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~proved)
            good = int(bad[0]) if len(bad) else hi - lo
            if good:
                sizes = np.fromiter(map(len, bodies[:good]), np.int64, good)
                kept = self._exact(table.slice(0, good).drop_columns([_SENTINEL_FIELD]), sizes, data)
                exact = kept.to_numpy()
                tables.append(kept.table)
                rows.append(np.arange(lo, lo + good, dtype=np.int64)[exact])
                rest.extend((np.flatnonzero(~exact) + lo).tolist())
            if good == hi - lo:
                return
            # The record at the first mismatch consumed the wrong number of bytes: everything after
            # it was read out of step. It goes to the per-record codec, the rest is read again.
            rest.append(lo + good)
            lo += good + 1

    def _read(self, data: bytes, count: int) -> pa.Table:
        block = b"".join((self._header, _zigzag(count), _zigzag(len(data)), data, _SYNC))
        frame = pl.read_avro(io.BytesIO(block))
        if frame.height != count:
            raise ValueError(f"read {frame.height} records of {count}")
        return pa.table(frame)

    def _exact(self, table: pa.Table, sizes: np.ndarray, data: bytes) -> _Exact:
        """Keep the rows read exactly as the per-record codec reads them (see :class:`_Exact`)."""
        n = table.num_rows
        ok = np.ones(n, dtype=bool)
        position = np.zeros(n, dtype=np.int64)  # where the current field starts, within its body
        unions: list[tuple[np.ndarray, np.ndarray]] = []  # (byte position in data, expected index byte)
        columns = []
        for f in self.fields:
            column = table.column(f.name)
            if f.base == "string" and column.type != pa.large_string():
                column = column.cast(pa.large_string())
            elif f.base == "bytes" and column.type != pa.large_binary():
                column = column.cast(pa.large_binary())
            array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            columns.append(array)
            valid = np.ones(n, dtype=bool) if array.null_count == 0 else array.is_valid().to_numpy(zero_copy_only=False)
            size, fits = _wire_size(f, array)
            ok &= fits | ~valid
            if f.nullable:
                unions.append((position.copy(), np.where(valid == f.null_first, 2, 0).astype(np.uint8)))
                size = np.where(valid, size, 0) + 1
            position += size
        ok &= position == sizes
        if unions and ok.any():
            buffer = np.frombuffer(data, dtype=np.uint8)
            starts = np.concatenate(([0], np.cumsum(sizes[:-1] + _SENTINEL_SIZE)))
            for at, expected in unions:
                where = np.where(ok, starts + at, 0)
                ok &= buffer[where] == expected
        kept = pa.Table.from_arrays(columns, names=[f.name for f in self.fields])
        return _Exact(kept.filter(pa.array(ok)) if not ok.all() else kept, ok)


@dataclass(frozen=True)
class _Exact:
    """Rows whose every field took exactly its canonical bytes, union indices valid, values in range.

    polars reads a union's index loosely (any index but the null one means the value), and
    an ``int`` or a decimal past its range as a wrapped or oversized value. The codec refuses
    those. A row is kept when the canonical size of each decoded value (the fewest bytes that
    encode it) adds up to the body's length: since a reader never takes fewer bytes than the
    canonical encoding of what it read (but for a zero-length decimal, which is left out),
    every field then sits at its canonical position, and each union index byte is checked
    there. Kept rows decode exactly as the codec decodes them; the others go through it.
    """

    table: pa.Table
    mask: np.ndarray

    def to_numpy(self) -> np.ndarray:
        return self.mask


_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_size(z: np.ndarray) -> np.ndarray:
    """Bytes of the varint of each unsigned value (1 to 10)."""
    return np.searchsorted(_VARINT_STEPS, z, side="right").astype(np.int64) + 1


def _zigzag_array(v: np.ndarray) -> np.ndarray:
    return ((v << 1) ^ (v >> 63)).view(np.uint64)


_DECIMAL_STEPS = np.array([1 << (8 * k - 1) for k in range(1, 8)], dtype=np.int64)


def _wire_size(f: _Field, array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The canonical encoded size of each value of ``f`` (nulls: anything), and whether the value is in range."""
    n = len(array)
    if f.base in ("string", "bytes"):
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
        lengths = np.diff(offsets)
        return _varint_size(_zigzag_array(lengths)) + lengths, np.ones(n, dtype=bool)
    if f.base == "float":
        return np.full(n, 4, dtype=np.int64), np.ones(n, dtype=bool)
    if f.base == "double":
        return np.full(n, 8, dtype=np.int64), np.ones(n, dtype=bool)
    if f.base == "long":
        v = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n]
        size = _varint_size(_zigzag_array(v))
        fits = size < 10  # a 10-byte varint may carry bits a 64-bit reader drops
        if f.int32:
            fits &= (v >= _INT32_MIN) & (v <= _INT32_MAX)
        return size, fits
    # decimal on bytes, precision <= 18: the unscaled value is the low word, sign-extended
    words = np.frombuffer(array.buffers()[1], dtype="<i8")[2 * array.offset : 2 * (array.offset + n)]
    low, high = words[0::2], words[1::2]
    assert f.decimal_limit is not None
    fits = (high == (low >> 63)) & (low > -f.decimal_limit) & (low < f.decimal_limit)
    fits &= low != 0  # zero may be written with no bytes at all: its size is not canonical
    magnitude = np.where(low < 0, ~low, low)
    length = np.searchsorted(_DECIMAL_STEPS, magnitude, side="right").astype(np.int64) + 1
    return 1 + length, fits
