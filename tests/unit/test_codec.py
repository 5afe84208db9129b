"""The Confluent wire format: our codec against confluent-kafka's own AvroSerializer."""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2.avro.codec import decode, encode, parse_schema, split_frame
from k2.avro.schemas import CONTRACTS, contract_for_topic, subject_for_topic
from k2.errors import DecodeError, NotConfluentFramed, UndecodableError
from k2.settings import Settings
from tests.unit.avro_wire import encode_wide, unscaled

TRADE: dict[str, Any] = {
    "symbol": "BHP",
    "company_id": 7078,
    "exchange": "ASX",
    "exchange_timestamp": 1394406000000,  # 2014-03-09T23:00:00Z
    "price": Decimal("36.667000"),
    "volume": 20000,
    "qualifiers": 3,
    "venue": "X",
    "buyer_id": None,
    "ingestion_timestamp": 1700000000123,
    "sequence_number": 1,
}
QUOTE: dict[str, Any] = {
    "symbol": "DVN",
    "company_id": 7181,
    "exchange": "ASX",
    "exchange_timestamp": 1394405173491,
    "bid_price": Decimal("0.665000"),
    "bid_volume": 15000,
    "ask_price": Decimal("0.000000"),
    "ask_volume": 0,
    "ingestion_timestamp": 1700000000456,
    "sequence_number": None,
}
REFERENCE: dict[str, Any] = {
    "company_id": 3153,
    "symbol": "MWR",
    "company_name": "MGM WIRELESS LTD",
    "isin": "AU000000MWR6",
    "start_date": "2003-11-06",
    "end_date": None,
}
RECORDS = {"trade": TRADE, "quote": QUOTE, "reference_data": REFERENCE}


def serialize(contract_name: str, record: dict[str, Any]) -> bytes:
    """Bytes exactly as a producer using confluent-kafka's serializer would write them."""
    client = SchemaRegistryClient.new_client({"url": "mock://k2-codec-tests"})
    contract = CONTRACTS[contract_name]
    serializer = AvroSerializer(
        client,
        contract.schema_str,
        conf={"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy},
    )
    data = serializer(record, SerializationContext(contract.topic(Settings()), MessageField.VALUE))
    assert data is not None
    return data


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_serializer_bytes_decode_to_the_same_values(name: str) -> None:
    data = serialize(name, RECORDS[name])
    schema_id, body = split_frame(data)
    assert schema_id >= 1
    assert decode(body, CONTRACTS[name].parsed) == RECORDS[name]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_encode_matches_the_serializer_byte_for_byte(name: str) -> None:
    data = serialize(name, RECORDS[name])
    schema_id, _ = split_frame(data)
    assert encode(schema_id, CONTRACTS[name].parsed, RECORDS[name]) == data


def test_types_timestamps_are_int_millis_and_decimals_exact() -> None:
    record = decode(split_frame(serialize("trade", TRADE))[1], CONTRACTS["trade"].parsed)
    assert type(record["exchange_timestamp"]) is int
    assert record["price"] == Decimal("36.667")
    assert record["price"].as_tuple().exponent == -6  # scale 6: Decimal('36.667000')


def test_split_frame_reads_big_endian_id_and_does_not_copy() -> None:
    data = bytes([0, 0, 1, 0, 2]) + b"body"
    schema_id, body = split_frame(data)
    assert schema_id == 65538
    assert isinstance(body, memoryview)
    assert body.tobytes() == b"body"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_too_short_is_not_framed(data: bytes) -> None:
    with pytest.raises(NotConfluentFramed) as info:
        split_frame(data)
    assert info.value.reason == "not_confluent_framed"


@pytest.mark.parametrize("magic", [1, 0x7B, 0xFF])
def test_wrong_magic_is_not_framed(magic: int) -> None:
    data = serialize("trade", TRADE)
    with pytest.raises(NotConfluentFramed):
        split_frame(bytes([magic]) + data[1:])


def test_header_only_is_framed_but_undecodable() -> None:
    _, body = split_frame(b"\x00\x00\x00\x00\x01")
    with pytest.raises(UndecodableError):
        decode(body, CONTRACTS["trade"].parsed)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_truncation_raises(name: str) -> None:
    _, body = split_frame(serialize(name, RECORDS[name]))
    whole = body.tobytes()
    for cut in range(len(whole)):
        with pytest.raises(UndecodableError) as info:
            decode(whole[:cut], CONTRACTS[name].parsed)
        assert info.value.reason == "undecodable"


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", bytes(100)])
def test_trailing_bytes_raise(extra: bytes) -> None:
    _, body = split_frame(serialize("trade", TRADE))
    with pytest.raises(UndecodableError, match="trailing"):
        decode(body.tobytes() + extra, CONTRACTS["trade"].parsed)


def test_random_bytes_decode_fully_or_raise_undecodable() -> None:
    rng = random.Random(20140310)
    schema = CONTRACTS["trade"].parsed
    outcomes = {"decoded": 0, "undecodable": 0}
    for _ in range(3000):
        payload = rng.randbytes(rng.randrange(0, 80))
        try:
            record = decode(payload, schema)
        except UndecodableError:
            outcomes["undecodable"] += 1
        else:  # a random body that happens to be a valid record must be consumed entirely
            assert set(record) == {f["name"] for f in schema["fields"]}
            outcomes["decoded"] += 1
    assert outcomes["undecodable"] > 0


def test_decode_errors_share_a_base_with_reason_codes() -> None:
    assert issubclass(NotConfluentFramed, DecodeError)
    assert issubclass(UndecodableError, DecodeError)
    assert {NotConfluentFramed.reason, UndecodableError.reason} == {"not_confluent_framed", "undecodable"}


def test_reader_schema_resolution() -> None:
    reader = parse_schema(
        {
            "type": "record",
            "name": "Trade",
            "namespace": "com.k2.market_data",
            "fields": [
                {"name": "symbol", "type": "string"},
                {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}},
                {"name": "currency", "type": "string", "default": "AUD"},
            ],
        }
    )
    _, body = split_frame(serialize("trade", TRADE))
    assert decode(body, CONTRACTS["trade"].parsed, reader) == {
        "symbol": "BHP",
        "price": Decimal("36.667000"),
        "currency": "AUD",
    }


def test_contracts_and_subjects_follow_the_topic_name_strategy() -> None:
    settings = Settings(trades_topic="t.trades")
    assert CONTRACTS["trade"].subject(settings) == "t.trades-value"
    assert CONTRACTS["quote"].subject(settings) == "market.quotes.raw-value"
    assert CONTRACTS["reference_data"].topic(settings) == "market.reference_data"
    assert subject_for_topic("x") == "x-value"
    assert contract_for_topic("t.trades", settings) is CONTRACTS["trade"]
    assert contract_for_topic("market.rejects", settings) is None
    assert all(not c.schema_str[0].isspace() and not c.schema_str[-1].isspace() for c in CONTRACTS.values())


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40, 2**63 - 1, -(2**63)])
def test_int_beyond_32_bits_on_the_wire_is_undecodable(value: int) -> None:
    # fastavro reads an Avro int as any varint; a 64-bit one would overflow the int32 column.
    body = split_frame(encode_wide(1, "trade", {**TRADE, "company_id": value}))[1]
    with pytest.raises(UndecodableError, match="32-bit"):
        decode(body, CONTRACTS["trade"].parsed)


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0])
def test_int_edges_decode(value: int) -> None:
    body = split_frame(encode_wide(1, "reference_data", {**REFERENCE, "company_id": value}))[1]
    assert decode(body, CONTRACTS["reference_data"].parsed)["company_id"] == value


@pytest.mark.parametrize("digits", [10**18, -(10**18), 10**30, 2**63])
def test_decimal_beyond_its_precision_is_undecodable(digits: int) -> None:
    # The decimal's bytes can hold any magnitude; fastavro would round it to 18 digits.
    body = split_frame(encode_wide(1, "trade", {**TRADE, "price": unscaled(digits)}))[1]
    with pytest.raises(UndecodableError, match="precision 18"):
        decode(body, CONTRACTS["trade"].parsed)


@pytest.mark.parametrize("digits", [10**18 - 1, -(10**18) + 1, 0])
def test_decimal_edges_decode_exactly(digits: int) -> None:
    body = split_frame(encode_wide(1, "trade", {**TRADE, "price": unscaled(digits)}))[1]
    assert decode(body, CONTRACTS["trade"].parsed)["price"] == Decimal(digits).scaleb(-6)


def test_non_minimal_decimal_bytes_decode() -> None:
    # Two's complement with redundant sign bytes is still the same number.
    for digits, wire in ((1, b"\x00" * 20 + b"\x01"), (-1, b"\xff" * 20)):
        body = split_frame(encode_wide(1, "trade", {**TRADE, "price": wire}))[1]
        assert decode(body, CONTRACTS["trade"].parsed)["price"] == Decimal(digits).scaleb(-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [100_000, 10 * 2**20])
def test_huge_decimal_bytes_are_refused_in_linear_time(size: int) -> None:
    # fastavro turns the bytes into a Decimal first: 1 s for 100 kB, hours for 10 MB (a stuck partition).
    body = split_frame(encode_wide(1, "trade", {**TRADE, "price": b"\x7f" + bytes(size)}))[1]
    start = time.perf_counter()
    with pytest.raises(UndecodableError, match="precision"):
        decode(body, CONTRACTS["trade"].parsed)
    assert time.perf_counter() - start < 5


def test_parsed_contract_still_encodes_decimals_and_ints() -> None:
    assert decode(split_frame(encode(3, CONTRACTS["trade"].parsed, TRADE))[1], CONTRACTS["trade"].parsed) == TRADE
