"""Records of one flat writer schema read field by field across the whole block, in numpy. Pure.

fastavro builds a dict per record, a few microseconds each: most of a value audit's time.
Here every record's position advances field by field in one numpy array: a varint is read
for all records at once from a window of 10 bytes at each position, a string or bytes field
is gathered into one Arrow buffer, a union index picks null or the value. What this
reader cannot take whole and clean (a varint that does not end within 10 bytes, a length
past the record's end, a union index other than 0 or 1, a boolean byte other than 0 or 1,
an enum index out of range, invalid UTF-8, bytes left over at the end) it does not judge:
the record is left to the per-record reader (fastavro), which decides it exactly as K2's
codec does. Its results are held to fastavro's by ``tests/unit/test_audit_values_decode.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from k2.audit.values_plan import BOOLEAN, DOUBLE, ENUM, FIXED, FLOAT, STRING, VARINT, Slot, WriterPlan

__all__ = ["read_columns"]

_HEADER = 5
_SHIFTS = [np.uint64(7 * k) for k in range(10)]
_PAD = 16


def _varint(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The zigzag varint at each position: value, length in bytes, and whether it ends within 10 bytes and 64 bits.

    A byte at a time for every position still in a varint: most end after one or two (a
    millisecond timestamp after six), so this costs a few numpy passes, not ten.
    """
    n = len(pos)
    unsigned = np.zeros(n, dtype=np.uint64)
    length = np.zeros(n, dtype=np.int64)
    going = np.ones(n, dtype=bool)
    byte = np.zeros(n, dtype=np.uint8)
    for k in range(10):
        byte = buf[pos + k]
        bits = (byte & 0x7F).astype(np.uint64) << _SHIFTS[k]
        unsigned |= bits if k == 0 else np.where(going, bits, np.uint64(0))
        length += going
        going &= byte >= 0x80
        if not going.any():
            break
    fits = ~going & ((length < 10) | (byte <= 1))  # the 10th byte holds the 64th bit only
    value = (unsigned >> np.uint64(1)).astype(np.int64) ^ -(unsigned & np.uint64(1)).astype(np.int64)
    return value, length, fits


def _validity(present: np.ndarray) -> pa.Buffer | None:
    return None if present.all() else pa.py_buffer(np.packbits(present, bitorder="little"))


def _gather(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[pa.Buffer, pa.Buffer]:
    """The byte strings ``buf[starts[i] : starts[i] + lengths[i]]`` as Arrow (large) offsets and data buffers."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(buf[index]))


def _read(
    slot: Slot, buf: np.ndarray, pos: np.ndarray, ends: np.ndarray, present: np.ndarray
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """One field's raw values (null where not ``present``), each position after it, and which reads are clean.

    ``pos`` is at most ``ends``, and the buffer is padded past the last end by more than any fixed read.
    """
    n = len(pos)
    validity = _validity(present)
    if slot.shape in (VARINT, ENUM):
        value, length, good = _varint(buf, pos)
        if slot.shape == VARINT:
            array = pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(np.where(present, value, 0))])
        else:
            good &= (value >= 0) & (value < len(slot.symbols))
            symbols = pa.array(slot.symbols, pa.large_string())
            array = symbols.take(pa.array(np.where(present & good, value, 0), mask=~present))
        return array, pos + length, good
    if slot.shape == BOOLEAN:
        byte = buf[pos]
        data = pa.py_buffer(np.packbits(byte == 1, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), n, [validity, data]), pos + 1, byte <= 1
    if slot.shape in (FLOAT, DOUBLE):
        width = 4 if slot.shape == FLOAT else 8
        raw = np.ascontiguousarray(buf[pos[:, None] + np.arange(width)]).view("<f4" if width == 4 else "<f8")
        type_ = pa.float32() if width == 4 else pa.float64()
        return pa.Array.from_buffers(type_, n, [validity, pa.py_buffer(raw.reshape(n))]), pos + width, np.ones(n, bool)
    if slot.shape == FIXED:
        width = slot.size
        data = np.ascontiguousarray(buf[pos[:, None] + np.arange(width)]) if width else np.zeros(0, np.uint8)
        return pa.Array.from_buffers(pa.binary(width), n, [validity, pa.py_buffer(data)]), pos + width, np.ones(n, bool)
    # bytes and string: a varint length, then that many bytes
    length, size, good = _varint(buf, pos)
    starts = pos + size
    good &= (length >= 0) & (length <= ends - starts)
    taken = np.where(present & good, length, 0)
    offsets, data = _gather(buf, starts, taken)
    type_ = pa.large_string() if slot.shape == STRING else pa.large_binary()
    array = pa.Array.from_buffers(type_, n, [validity, offsets, data])
    return array, starts + np.where(good, length, 0), good


def _utf8_valid(array: pa.Array) -> np.ndarray:
    """Per value: valid UTF-8 (checked value by value only when the whole array is not)."""
    try:
        array.validate(full=True)
        return np.ones(len(array), dtype=bool)
    except pa.ArrowInvalid:
        binary = array.view(pa.large_binary())
        out = np.ones(len(array), dtype=bool)
        for i, value in enumerate(binary.to_pylist()):
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    out[i] = False
        return out


def read_columns(plan: WriterPlan, values: Sequence[bytes]) -> tuple[list[pa.Array], np.ndarray]:
    """The raw values of every field of ``plan`` in ``values`` (Confluent frames), and which records read clean.

    Values of records not read clean are meaningless: leave those records to the per-record reader.
    """
    n = len(values)
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=n)
    ends = np.cumsum(sizes)
    pad = _PAD + max((f.slot.size for f in plan.fields), default=0)
    buf = np.frombuffer(b"".join(values) + bytes(pad), dtype=np.uint8)
    pos = ends - sizes + _HEADER
    clean = np.ones(n, dtype=bool)
    arrays: list[pa.Array] = []
    for field in plan.fields:
        slot = field.slot
        present = np.ones(n, dtype=bool)
        if slot.null_index is not None:
            branch, size, good = _varint(buf, pos)
            clean &= good & ((branch == 0) | (branch == 1))
            present = branch != slot.null_index
            pos = pos + size
        array, after, good = _read(slot, buf, np.minimum(pos, ends), ends, present & clean)
        clean &= ~present | (good & (after <= ends))
        if slot.shape == STRING:
            clean &= _utf8_valid(array)
        pos = np.where(present & clean, after, np.where(clean, pos, ends))
        arrays.append(array)
    clean &= pos == ends
    return arrays, clean
