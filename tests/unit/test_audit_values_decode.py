"""The value audit's own decoder (k2/audit/values_decode.py): exact values, and K2's definition of undecodable.

Held against K2's per-record codec (``k2.avro.codec.decode``), which is the definition: on
randomly mutated frames both must refuse the same records and read the same values.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pyarrow as pa
import pytest

from k2.audit.values_decode import OFFSET, WriterPlan, decode_block, schema_ids
from k2.avro.codec import HEADER_SIZE, decode
from k2.errors import DecodeError

from .avro_wire import encode_wide
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
