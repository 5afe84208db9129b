"""The value audit's own decoder (k2/audit/values_decode.py): exact values, and K2's definition of undecodable.

Held against K2's per-record codec (``k2.avro.codec.decode``), which is the definition: on
randomly mutated frames both must refuse the same records and read the same values.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from k2.audit.values_compare import differs
from k2.audit.values_decode import OFFSET, WriterPlan, decode_block, schema_ids
from k2.audit.values_plan import strip_logical
from k2.avro.codec import HEADER_SIZE, decode, encode, parse_schema
from k2.errors import DecodeError

from .avro_wire import encode_wide, unscaled
from .lake_helpers import T0, trade
from .values_helpers import PARSED, V1, V2, framed, resolve


def test_values_are_exact_decimals_and_utc_instants() -> None:
    value = framed(V2, trade(price=Decimal("999999999999.999999"), trade_id="T-1", sequence_number=None))
    decoded = decode_block([7], [value], resolve)
    (group,) = decoded.groups
    row = group.table.to_pylist()[0]
    assert group.plan.schema_id == V2 and row[OFFSET] == 7
    assert group.table.schema.field("price").type == pa.decimal128(18, 6)
    assert row["price"] == Decimal("999999999999.999999")
    assert group.table.schema.field("exchange_timestamp").type == pa.timestamp("us", "UTC")
    assert group.table.column("exchange_timestamp").cast(pa.int64()).to_pylist() == [T0 * 1000]
    assert (row["trade_id"], row["sequence_number"], row["company_id"]) == ("T-1", None, 1)
    assert group.table.schema.field("company_id").type == pa.int32()


def test_negative_and_long_decimals_are_exact() -> None:
    prices = [Decimal("-0.000001"), Decimal("-999999999999.999999"), Decimal("0.000000"), Decimal("128.000000")]
    decoded = decode_block(range(4), [framed(V1, trade(price=p)) for p in prices], resolve)
    assert decoded.groups[0].table.column("price").to_pylist() == prices


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"\x00\x00\x00", "shorter than the Confluent header"),
        (b'{"not": "avro"}', "not Confluent-framed"),
        (b"\x00\x80\x00\x00\x01abc", "high bit"),
        (b"\x00\x00\x00\x00\x63abc", "unknown_schema_id"),
        (framed(V1, trade()) + b"\x00", "trailing byte"),
        (framed(V1, trade())[:-3], "undecodable"),
        (encode_wide(V1, "trade", trade(company_id=2**31)), "company_id: an int beyond 32 bits"),
        (
            encode_wide(V1, "trade", trade(price=Decimal("1000000000000.000000"))),
            "price: more digits than its precision",
        ),
    ],
)
def test_what_k2_refuses_to_decode_is_undecodable_with_the_reason(value: bytes | None, why: str) -> None:
    decoded = decode_block([3], [value], resolve)
    assert not decoded.groups
    assert decoded.undecodable.to_pylist()[0]["offset"] == 3
    assert why in decoded.undecodable.to_pylist()[0]["why"]


def test_schema_ids_are_read_from_the_frames() -> None:
    assert schema_ids([framed(V1, trade()), b"\x00\x00\x00\x01\x00", b"\x01\x00\x00\x00\x07", None]).tolist() == [
        V1,
        256,
        -1,
        -1,
    ]


def test_writer_schemas_that_are_not_records_or_have_nested_fields() -> None:
    with pytest.raises(ValueError, match="not an Avro record"):
        WriterPlan.of(9, '"string"')
    plan = WriterPlan.of(
        9,
        '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, '
        '{"name": "b", "type": {"type": "array", "items": "int"}}, {"name": "c", "type": ["null", "int", "string"]}]}',
    )
    assert [f.name for f in plan.fields] == ["a"]
    assert [name for name, _ in plan.skipped] == ["b", "c"]


def _mutate(rng: random.Random, value: bytes) -> bytes:
    body = bytearray(value)
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(body[: rng.randrange(HEADER_SIZE, len(body))])
    if kind == 1:
        return bytes(body + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))))
    for _ in range(rng.randrange(1, 4)):
        body[rng.randrange(HEADER_SIZE, len(body))] = rng.randrange(256)
    return bytes(body)


def test_mutated_frames_are_refused_and_read_as_k2s_codec_reads_them() -> None:
    rng = random.Random(17)
    values = [
        _mutate(rng, framed(V2, trade(price=Decimal(rng.randrange(1, 10**9)).scaleb(-6), trade_id=f"T-{i}")))
        for i in range(600)
    ]
    decoded = decode_block(range(len(values)), values, resolve)
    mine = {row[OFFSET]: row for group in decoded.groups for row in group.table.to_pylist()}
    refused = set(decoded.undecodable.column(OFFSET).to_pylist())
    assert mine.keys() | refused == set(range(len(values))) and not mine.keys() & refused
    for offset, value in enumerate(values):
        try:
            k2 = decode(value, PARSED[V2], offset=HEADER_SIZE)
        except DecodeError:
            assert offset in refused, f"K2 refuses offset {offset}, the audit reads it: {mine.get(offset)}"
            continue
        assert offset in mine, f"K2 reads offset {offset}, the audit refuses it: {decoded.undecodable.to_pylist()}"
        row = mine[offset]
        for name, expected in k2.items():
            got = row[name]
            if name.endswith("timestamp"):
                got = int(got.timestamp() * 1000)
            assert got == expected, (offset, name)
    assert 100 < len(refused) < 550  # the mutations make both kinds


EVERY_TYPE = {
    "type": "record",
    "name": "Every",
    "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": ["null", "long"]},
        {"name": "f", "type": "float"},
        {"name": "d", "type": ["double", "null"]},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": ["null", "string"]},
        {"name": "fx", "type": {"type": "fixed", "name": "F3", "size": 3}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}},
        {"name": "fdec", "type": ["null", {"type": "fixed", "name": "F9", "size": 9, "logicalType": "decimal",
                                            "precision": 20, "scale": 2}]},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
    ],
}  # fmt: skip


def _every(rng: random.Random) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.3 else value

    return {
        "b": rng.random() < 0.5,
        "i": rng.randint(-(2**31), 2**31 - 1),
        "l": maybe(rng.randint(-(2**63), 2**63 - 1)),
        "f": rng.choice([0.0, -1.5, 3.25, float("inf")]),
        "d": maybe(rng.uniform(-1e300, 1e300)),
        "by": bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))),
        "s": maybe("".join(rng.choice("aé€𝄞 \n") for _ in range(rng.randrange(0, 12)))),
        "fx": bytes(rng.randrange(256) for _ in range(3)),
        "e": rng.choice("ABC"),
        "dec": Decimal(rng.randint(-(10**18) + 1, 10**18 - 1)).scaleb(-6),
        "fdec": maybe(Decimal(rng.randint(-(10**20) + 1, 10**20 - 1)).scaleb(-2)),
        "day": rng.randint(-(2**31), 2**31 - 1),
        "ts": rng.randint(-(2**53), 2**53),
        "tm": rng.randint(0, 86_399_999),
    }


def test_the_column_reader_reads_what_fastavro_reads_and_leaves_it_the_rest() -> None:
    """Every field type the audit compares, through both readers: the records the column reader calls clean
    decode to fastavro's values; mutated ones it leaves to fastavro, or reads as fastavro does."""
    from k2.audit.values_columns import read_columns
    from k2.audit.values_decode import _raw, _read

    rng = random.Random(5)
    stripped = parse_schema(strip_logical(EVERY_TYPE))
    plan = WriterPlan.of(4, json.dumps(EVERY_TYPE))
    frames = [encode(4, stripped, _wire(_every(rng))) for _ in range(400)]
    frames += [_mutate(rng, f) for f in frames[:400]]
    arrays, clean = read_columns(plan, frames)
    assert clean[:400].all()  # every clean frame is read by the column reader
    assert 0 < clean[400:].sum() < 400
    index = np.flatnonzero(clean)
    records, kept, failed = _read(frames, index, plan.parsed)
    assert kept == index.tolist() and not failed  # what the column reader calls clean, fastavro reads whole
    for column, field in zip(arrays, plan.fields, strict=True):
        expected, _ = _raw(field, records)
        got = column.filter(pa.array(clean))
        assert not differs(got, expected).to_numpy(zero_copy_only=False).any(), field.name  # NaN equals NaN there


def _wire(record: dict[str, Any]) -> dict[str, Any]:
    """Logical values as the stripped schema writes them (decimals as their unscaled bytes)."""
    out = dict(record)
    out["dec"] = unscaled(int(record["dec"].scaleb(6)))
    if record["fdec"] is not None:
        out["fdec"] = int(record["fdec"].scaleb(2)).to_bytes(9, "big", signed=True)
    return out


def test_varints_of_ten_bytes_read_only_when_they_fit_64_bits() -> None:
    from k2.audit.values_columns import _varint

    cases = [
        (b"\x00", 0, 1, True),
        (b"\x01", -1, 1, True),
        (b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", 2**63 - 1, 10, True),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", -(2**63), 10, True),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", None, 10, False),  # beyond 64 bits
        (b"\xff" * 10 + b"\x00", None, None, False),  # does not end within 10 bytes
    ]
    for data, value, length, fits in cases:
        buf = np.frombuffer(data + bytes(16), np.uint8)
        got_value, got_length, got_fits = _varint(buf, np.array([0]))
        assert bool(got_fits[0]) is fits, data
        if fits:
            assert (int(got_value[0]), int(got_length[0])) == (value, length), data
