"""The payload fingerprint of each row: what tells a duplicate (same payload) from a conflict. Pure, vectorised.

A fingerprint outlives the worker (it is kept in the sequence state's changelog), so it
must not depend on the process or on a library's version: it is defined here, on the
values of a row in its table's Arrow schema, with numpy's wrapping 64-bit arithmetic.

Per column, in schema order, each value becomes a 64-bit word: an integer, timestamp or
date its integer value; a decimal its two 64-bit halves mixed; a string or binary the
CRC-32 of its bytes (computed once per distinct value); a float its IEEE bits; a null a
fixed mark. The words are folded with the SplitMix64 finaliser, and the result folded to
32 bits, never 0 (0 marks an empty slot of the window). Two rows with the same values in
the same columns have the same fingerprint in any process; a collision can only make a
conflict look like a duplicate, and both are rejected.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.arrow import SMALL_BATCH_ROWS

__all__ = ["fingerprints"]

_SEED = np.uint64(0x6B32_6B32_6B32_6B32)
_NULL = np.uint64(0x9E37_79B9_7F4A_7C15)
_C1 = np.uint64(0xBF58_476D_1CE4_E5B9)
_C2 = np.uint64(0x94D0_49BB_1331_11EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _C1
    x = x ^ (x >> np.uint64(27))
    x = x * _C2
    return x ^ (x >> np.uint64(31))


#: Values below which strings are hashed one by one: Arrow's dictionary encoding costs more for a live batch.
SMALL = SMALL_BATCH_ROWS


def _words(array: pa.Array) -> np.ndarray:
    """One uint64 per value (nulls not yet marked: their word is arbitrary, :func:`fingerprints` replaces it)."""
    t = array.type
    n = len(array)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        if n < SMALL:
            values = array.to_pylist()
            return np.fromiter(
                (0 if v is None else zlib.crc32(v.encode() if isinstance(v, str) else v) for v in values),
                dtype=np.uint64,
                count=n,
            )
        encoded = pc.dictionary_encode(array)
        texts = encoded.dictionary.to_pylist()
        digests = np.fromiter(
            (zlib.crc32(v.encode() if isinstance(v, str) else v) for v in texts), dtype=np.uint64, count=len(texts)
        )
        indices = _filled(encoded.indices, 0).to_numpy(zero_copy_only=False)
        return digests[indices] if len(digests) else np.zeros(n, dtype=np.uint64)
    if pa.types.is_decimal128(t):
        words = np.frombuffer(array.buffers()[1], dtype="<u8")[2 * array.offset : 2 * (array.offset + n)]
        return words[0::2] ^ _mix(words[1::2])
    if pa.types.is_floating(t):
        return _filled(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False).view(np.uint64)
    if pa.types.is_boolean(t):
        return _filled(array, False).to_numpy(zero_copy_only=False).astype(np.uint64)
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_integer(t):
        if array.null_count == 0 and (pa.types.is_integer(t) or t.bit_width == 64):
            # The integer value, as the cast below gives it, without Arrow's calls (their fixed cost).
            values = array.view(pa.int64()) if t.bit_width == 64 else array
            return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False).view(np.uint64)
        return _filled(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
    raise TypeError(f"no fingerprint for a column of {t}")


def _filled(array: pa.Array, value: object) -> pa.Array:
    """``array`` with its nulls replaced by ``value`` (itself when it has none)."""
    return pc.fill_null(array, value) if array.null_count else array


def fingerprints(rows: pa.Table, skip: Collection[str] = ()) -> np.ndarray:
    """The fingerprint of each row over every column but ``skip`` (uint32, never 0)."""
    h = np.full(rows.num_rows, _SEED, dtype=np.uint64)
    for name in rows.column_names:
        if name in skip:
            continue
        column = rows.column(name)
        if isinstance(column, pa.ChunkedArray):
            array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        else:
            array = column
        words = _words(array)
        if array.null_count:
            words = np.where(array.is_valid().to_numpy(zero_copy_only=False), words, _NULL)
        h = _mix(h ^ words)
    folded = ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    folded[folded == 0] = 1
    return folded
