"""Source records decoded for the value audit, independently of the worker's decoders. Pure.

The worker reads a batch with polars' Avro reader (:mod:`k2.avro.batch`), falls back to
fastavro through :mod:`k2.avro.codec` (which converts decimals and guards their size), and
builds rows with :mod:`k2.lake.arrow`. The value audit shares none of that code: the records
of a flat writer schema are read field by field across the whole block in numpy
(:mod:`~k2.audit.values_columns`); any record that reader does not take whole, and every
record of a schema with nested fields, is read by fastavro's own schemaless reader on the
writer schema stripped of its logical types; either way the raw values become the compared
columns by :mod:`~k2.audit.values_plan`'s conversions. What it shares with the worker is the
writer schema text (by id, from the registry) and, for the records the worker sends through
its per-record path only, fastavro's binary reader.

What K2 refuses to decode, this refuses too, with the reason (a row landed for such a record
is a mismatch): a value that is not Confluent-framed, a schema id with the high bit set, an
id the registry does not know or that is not registered under the topic's subject (the
caller's ``resolve`` says so), a body fastavro cannot read or that leaves bytes over, an
``int`` beyond 32 bits, a decimal with more digits than its precision, a value its column
type cannot hold.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import fastavro
import numpy as np
import pyarrow as pa

from k2.audit.values_columns import read_columns
from k2.audit.values_plan import VARINT, FieldPlan, WriterPlan, raw_type

__all__ = ["OFFSET", "Decoded", "FieldPlan", "Group", "WriterPlan", "decode_block", "schema_ids"]

OFFSET = "offset"
"""The column of a decoded group holding each record's Kafka offset."""

_HEADER = 5
_MAX_ID = 0x7FFF_FFFF
_NO_ID = -1
_INT64 = (-(2**63), 2**63 - 1)


#: What a schema id resolves to: its plan, or the reason K2 rejects its records (unknown id, wrong subject...).
Resolve = Callable[[int], WriterPlan | str]


@dataclass(frozen=True)
class Group:
    """The records of a block that decode with one writer schema: ``offset`` and a column per field."""

    plan: WriterPlan
    table: pa.Table


@dataclass(frozen=True)
class Decoded:
    """A block of source records as K2's definition reads them."""

    groups: tuple[Group, ...]
    undecodable: pa.Table
    """``offset`` and ``why`` of each record K2 cannot decode (a row for one is a mismatch)."""


def schema_ids(values: Sequence[bytes | None]) -> np.ndarray:
    """Each value's Confluent schema id, or -1 where the value is not framed (or the id has the high bit set)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    blank = b"\x01\x00\x00\x00\x00"  # not magic 0: reads as unframed
    heads = b"".join([v[:_HEADER] if v is not None and len(v) >= _HEADER else blank for v in values])
    raw = np.frombuffer(heads, dtype=np.uint8).reshape(n, _HEADER)
    ids = raw[:, 1:].astype(np.int64)
    out = (ids[:, 0] << 24) | (ids[:, 1] << 16) | (ids[:, 2] << 8) | ids[:, 3]
    framed = (raw[:, 0] == 0) & (out <= _MAX_ID)
    return np.where(framed, out, _NO_ID)


def _unframed_reason(value: bytes | None) -> str:
    if value is None:
        return "the value is null (a tombstone)"
    if len(value) < _HEADER:
        return f"value of {len(value)} bytes is shorter than the Confluent header"
    if value[0] != 0:
        return f"magic byte {value[0]:#04x}, not 0x00: not Confluent-framed"
    return f"schema id {int.from_bytes(value[1:_HEADER], 'big')} has the high bit set"


def _read(
    values: Sequence[bytes], index: np.ndarray, parsed: Any
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str]]]:
    """fastavro on each body; the records read whole, their indices, and ``(index, why)`` of the rest."""
    read = fastavro.schemaless_reader
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    for i in index.tolist():
        value = values[i]
        stream = io.BytesIO(value)
        stream.seek(_HEADER)
        try:
            record = read(stream, parsed)
        except Exception as exc:  # fastavro raises many types for bad bytes: each is "undecodable"
            failed.append((i, f"undecodable: {type(exc).__name__}: {exc}"))
            continue
        left = len(value) - stream.tell()
        if left:
            failed.append((i, f"undecodable: {left} trailing byte(s) after the record"))
            continue
        if not isinstance(record, dict):
            failed.append((i, f"undecodable: decoded a {type(record).__name__}, not a record"))
            continue
        records.append(record)
        kept.append(i)
    return records, kept, failed


def _raw(field: FieldPlan, records: list[dict[str, Any]]) -> tuple[pa.Array, np.ndarray | None]:
    """One field of fastavro's records as raw values (:func:`~k2.audit.values_plan.raw_type`); a varint beyond
    64 bits (fastavro reads them into Python ints) is null and bad."""
    values = [r[field.name] for r in records]
    type_ = raw_type(field.slot)
    if field.slot.shape != VARINT:
        return pa.array(values, type_), None
    try:
        return pa.array(values, type_), None
    except (OverflowError, pa.ArrowInvalid):
        bad = np.array([v is not None and not _INT64[0] <= v <= _INT64[1] for v in values], dtype=bool)
        return pa.array([None if b else v for v, b in zip(values, bad, strict=True)], type_), bad


def _raw_columns(
    plan: WriterPlan, values: list[bytes]
) -> tuple[list[pa.Array], np.ndarray, np.ndarray | None, list[tuple[int, str]]]:
    """Raw columns of the records that read, their indices in ``values``, which of them are bad, and ``(index,
    why)`` of those that do not read: the column reader for what it reads clean, fastavro for the rest."""
    n = len(values)
    if plan.flat:
        arrays, clean = read_columns(plan, values)
    else:
        arrays, clean = [], np.zeros(n, dtype=bool)
    slow = np.flatnonzero(~clean)
    if not len(slow):
        return arrays, np.arange(n), None, []
    records, kept, failed = _read(values, slow, plan.parsed)
    fast = pa.array(clean)
    bad: np.ndarray | None = None
    columns = []
    for i, field in enumerate(plan.fields):
        raw, overflow = _raw(field, records)
        fast_part = arrays[i].filter(fast) if arrays else pa.array([], raw.type)
        columns.append(pa.concat_arrays([fast_part, raw]))
        if overflow is not None:
            flags = np.concatenate([np.zeros(int(clean.sum()), bool), overflow])
            bad = flags if bad is None else bad | flags
    rows = np.concatenate([np.flatnonzero(clean), np.asarray(kept, dtype=np.int64)])
    return columns, rows, bad, failed


def _group(plan: WriterPlan, offsets: np.ndarray, values: list[bytes]) -> tuple[Group | None, list[tuple[int, str]]]:
    """The records of one writer schema as its group, and ``(index, why)`` of those K2 cannot decode."""
    raw, rows, overflow, failed = _raw_columns(plan, values)
    if not len(rows):
        return None, failed
    bad = np.zeros(len(rows), dtype=bool) if overflow is None else overflow.copy()
    why = ["undecodable: a long beyond 64 bits" if b else "" for b in bad] if overflow is not None else [""] * len(rows)
    arrays: dict[str, pa.Array] = {}
    for field, column in zip(plan.fields, raw, strict=True):
        converted = field.convert(column)
        arrays[field.name] = converted.array
        if converted.bad is not None:
            for j in np.flatnonzero(converted.bad & ~bad).tolist():
                why[j] = f"undecodable: {field.name}: {converted.why}"
            bad |= converted.bad
    table = pa.table({OFFSET: pa.array(offsets[rows], pa.int64()), **arrays})
    if bad.any():
        failed += [(int(rows[j]), why[j]) for j in np.flatnonzero(bad).tolist()]
        table = table.filter(pa.array(~bad))
    return (Group(plan, table) if table.num_rows else None), failed


def decode_block(offsets: Sequence[int] | np.ndarray, values: Sequence[bytes | None], resolve: Resolve) -> Decoded:
    """Decode the records at ``offsets`` (ascending) with their writer schemas, K2's way (module docstring)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ids = schema_ids(values)
    groups: list[Group] = []
    failed: list[tuple[int, str]] = [(i, _unframed_reason(values[i])) for i in np.flatnonzero(ids == _NO_ID).tolist()]
    for schema_id in np.unique(ids[ids != _NO_ID]).tolist():
        index = np.flatnonzero(ids == schema_id)
        plan = resolve(int(schema_id))
        if isinstance(plan, str):
            failed += [(i, plan) for i in index.tolist()]
            continue
        # framed, so never None
        chosen = cast(list[bytes], values if len(index) == len(values) else [values[i] for i in index.tolist()])
        group, bad = _group(plan, offsets[index], chosen)
        failed += [(int(index[j]), why) for j, why in bad]
        if group is not None:
            groups.append(group)
    failed.sort()
    undecodable = pa.table(
        {
            OFFSET: pa.array(offsets[np.asarray([i for i, _ in failed], dtype=np.int64)], pa.int64()),
            "why": pa.array([w for _, w in failed], pa.string()),
        }
    )
    return Decoded(tuple(groups), undecodable)
