"""classify(): every bad record becomes a reject with the right reason; good ones are untouched."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

import pytest

from k2.avro.codec import encode, parse_schema
from k2.avro.schemas import CONTRACTS
from k2.errors import UnknownSchemaId, WrongSubject
from k2.ingest.classify import Resolution, classify
from k2.ingest.frames import Frames, RawRecord
from k2.lake.arrow import events_to_arrow, rejects_to_arrow
from k2.lake.schemas import TRADES
from k2.validation import validate_quote, validate_trade
from tests.unit.avro_wire import encode_wide, unscaled
from tests.unit.lake_helpers import T0, quote, trade

TOPIC = "market.trades.raw"
NOW = T0 + 60_000
TRADE_ID = 11
QUOTE_ID = 12
UNKNOWN_ID = 99


class Writer:
    def __init__(self, parsed: Any) -> None:
        self.parsed = parsed


TRADE_SCHEMA = CONTRACTS["trade"].parsed
SCHEMAS: dict[int, Resolution] = {
    TRADE_ID: Writer(TRADE_SCHEMA),
    QUOTE_ID: WrongSubject("schema id 12 is not registered under subject market.trades.raw-value"),
    UNKNOWN_ID: UnknownSchemaId("schema id 99 is not in the registry"),
}


def raw(offset: int, value: bytes | None, partition: int = 0, key: bytes | None = b"BHP") -> RawRecord:
    return RawRecord(partition, offset, key, value, NOW)


def good(offset: int, **overrides: Any) -> RawRecord:
    return raw(offset, encode(TRADE_ID, TRADE_SCHEMA, trade(**overrides)))


def run(records: list[RawRecord]) -> Any:
    return classify(TOPIC, records, SCHEMAS, validate_trade, NOW, "w1")


def test_good_trade_is_accepted_with_exact_values() -> None:
    out = run([good(7, price=Decimal("36.667000"))])
    assert out.rejected == []
    [event] = out.accepted
    assert (event.topic, event.partition, event.offset) == (TOPIC, 0, 7)
    assert event.record["price"] == Decimal("36.667000")
    assert event.record["exchange_timestamp"] == T0
    assert out.accepted_schema_ids == {TRADE_ID}


def bad_corpus() -> list[tuple[str, bytes | None]]:
    body = encode(TRADE_ID, TRADE_SCHEMA, trade())
    return [
        ("not_confluent_framed", os.urandom(3)),
        ("not_confluent_framed", b"\x01" + body[1:]),  # wrong magic byte
        ("not_confluent_framed", None),  # tombstone
        ("unknown_schema_id", b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + body[5:]),
        ("wrong_subject", b"\x00" + QUOTE_ID.to_bytes(4, "big") + body[5:]),
        ("undecodable", body[:-4]),  # truncated
        ("undecodable", body + b"\x00\x01"),  # trailing garbage
        ("invalid_value", encode(TRADE_ID, TRADE_SCHEMA, trade(price=Decimal("0")))),
        ("invalid_value", encode(TRADE_ID, TRADE_SCHEMA, trade(volume=0))),
        ("invalid_value", encode(TRADE_ID, TRADE_SCHEMA, trade(symbol=""))),
        ("invalid_value", encode(TRADE_ID, TRADE_SCHEMA, trade(exchange_timestamp=1_000))),
        ("invalid_value", encode(TRADE_ID, TRADE_SCHEMA, trade(exchange_timestamp=NOW + 2 * 86_400_000))),
    ]


def test_bad_records_are_rejected_with_reason_and_bytes_untouched_among_good_ones() -> None:
    corpus = bad_corpus()
    records: list[RawRecord] = []
    offset = 0
    for _reason, value in corpus:
        records.append(good(offset))
        records.append(raw(offset + 1, value, key=b"key-%d" % offset))
        offset += 2
    out = run(records)
    assert [e.offset for e in out.accepted] == list(range(0, offset, 2))
    assert [(r.offset, r.reason) for r in out.rejected] == [
        (i * 2 + 1, reason) for i, (reason, _value) in enumerate(corpus)
    ]
    for r, (_reason, value) in zip(out.rejected, corpus, strict=True):
        assert r.value == value
        assert r.key == b"key-%d" % (r.offset - 1)
        assert r.topic == TOPIC and r.worker_id == "w1" and r.detail


def test_invalid_value_detail_names_field_and_value() -> None:
    out = run([raw(0, encode(TRADE_ID, TRADE_SCHEMA, trade(price=Decimal("-1.5"))))])
    [r] = out.rejected
    assert r.reason == "invalid_value"
    assert r.detail.startswith("price=Decimal('-1.500000')")
    assert r.schema_id == TRADE_ID


def test_schema_id_known_only_for_framed_records() -> None:
    out = run([raw(0, b"garbage"), raw(1, b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + b"\x02")])
    assert [r.schema_id for r in out.rejected] == [None, UNKNOWN_ID]


def test_schema_ids_lists_framed_ids_only() -> None:
    batch = [good(0), raw(1, b"\x01\x00\x00\x00\x05x"), raw(2, None), raw(3, b"\x00\x00")]
    assert Frames.from_records(batch).schema_ids() == {TRADE_ID}
    headers = Frames.from_records(batch).framing
    assert headers.framed.tolist() == [True, False, False, False]
    assert headers.sizes.tolist() == [len(batch[0].value or b""), 6, 0, 2]


def test_crossed_quote_is_accepted_and_counted() -> None:
    quote_schema = CONTRACTS["quote"].parsed
    schemas: dict[int, Resolution] = {5: Writer(quote_schema)}
    crossed = quote(bid_price=Decimal("37.800000"), ask_price=Decimal("37.700000"))
    records = [RawRecord(0, 0, b"BHP", encode(5, quote_schema, crossed), NOW)]
    out = classify("market.quotes.raw", records, schemas, validate_quote, NOW)
    assert len(out.accepted) == 1 and out.rejected == [] and out.flagged == 1


def test_newer_writer_schema_with_extra_field_decodes() -> None:
    tree = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None, "doc": "x"})
    v2 = parse_schema(tree)
    schemas: dict[int, Resolution] = {21: Writer(v2)}
    rec = raw(0, encode(21, v2, {**trade(), "trade_id": "T-1"}))
    out = classify(TOPIC, [rec], schemas, validate_trade, NOW)
    assert out.accepted[0].record["trade_id"] == "T-1"
    assert out.accepted_schema_ids == {21}


@pytest.mark.parametrize("n", [1, 500])
def test_order_is_preserved(n: int) -> None:
    out = run([good(i, sequence_number=i) for i in range(n)])
    assert [e.record["sequence_number"] for e in out.accepted] == list(range(n))


def test_schema_id_with_the_high_bit_is_unknown_without_asking_the_registry() -> None:
    # Found by the fault probe: id 0x80000002 reached the int32 schema_id column and
    # rejects_to_arrow raised, losing the whole batch. Registry ids are positive Java ints.
    body = encode(TRADE_ID, TRADE_SCHEMA, trade())[5:]
    value = b"\x00\x80\x00\x00\x02" + body
    assert Frames.from_records([raw(0, value)]).schema_ids() == set()  # never sent to the registry
    out = run([raw(0, value), good(1)])  # SCHEMAS lacks the id: a lookup would be a KeyError
    [r] = out.rejected
    assert (r.offset, r.reason, r.schema_id) == (0, "unknown_schema_id", None)
    assert "2147483650" in r.detail  # the raw id is kept where it fits
    assert [e.offset for e in out.accepted] == [1]
    assert rejects_to_arrow(out.rejected)["schema_id"].to_pylist() == [None]


def test_largest_registry_id_is_still_resolved() -> None:
    value = b"\x00\x7f\xff\xff\xff\x02"
    assert Frames.from_records([raw(0, value)]).schema_ids() == {2**31 - 1}


def test_out_of_contract_wire_values_are_undecodable_and_the_batch_converts() -> None:
    # Each crashed the Arrow conversion of its batch before (int32 and decimal(18,6) overflow).
    values = [
        encode_wide(TRADE_ID, "trade", trade(company_id=2**40)),
        encode_wide(TRADE_ID, "trade", trade(qualifiers=-(2**31) - 1)),
        encode_wide(TRADE_ID, "trade", trade(price=unscaled(10**18))),
        encode_wide(TRADE_ID, "trade", trade(price=b"\x7f" + bytes(200_000))),
    ]
    out = run([*(raw(i, v) for i, v in enumerate(values)), good(len(values))])
    assert [(r.offset, r.reason) for r in out.rejected] == [(i, "undecodable") for i in range(len(values))]
    assert events_to_arrow(TRADES, out.accepted).num_rows == 1
    assert rejects_to_arrow(out.rejected).num_rows == len(values)


def _trade_writer(edit: Any) -> Writer:
    tree = json.loads(CONTRACTS["trade"].schema_str)
    edit(tree["fields"])
    return Writer(parse_schema(tree))


@pytest.mark.parametrize(
    ("edit", "record", "field"),
    [
        # A BACKWARD-compatible writer may drop a field or make a decimal a string: the
        # validator then hit a KeyError or a TypeError and the whole batch raised.
        (lambda fs: fs.pop(4), {k: v for k, v in trade().items() if k != "price"}, "price"),
        (lambda fs: fs[4].update(type="string"), {**trade(), "price": "36.667"}, "record"),
    ],
)
def test_a_record_the_validator_cannot_read_is_invalid_not_a_crash(edit: Any, record: Any, field: str) -> None:
    writer = _trade_writer(edit)
    out = classify(TOPIC, [raw(0, encode(31, writer.parsed, record))], {31: writer}, validate_trade, NOW)
    [r] = out.rejected
    assert r.reason == "invalid_value" and r.detail.startswith(f"{field}=")
    rejects_to_arrow(out.rejected)


def test_reject_detail_is_one_bounded_printable_line() -> None:
    schemas: dict[int, Resolution] = {
        TRADE_ID: Writer(TRADE_SCHEMA),
        41: UnknownSchemaId("schema id 41 is not in the registry: HTTP 404\n<html>\n" + "x" * 100_000 + "\ud800"),
    }
    records = [
        good(0, symbol=" " * 1_000_000),  # a huge value in an InvalidValue
        raw(1, b"\x00" + (41).to_bytes(4, "big")),  # a multi-line, huge, unencodable message
    ]
    out = classify(TOPIC, records, schemas, validate_trade, NOW)
    assert [r.reason for r in out.rejected] == ["invalid_value", "unknown_schema_id"]
    for r in out.rejected:
        assert r.detail and len(r.detail) <= 1000 and r.detail.isprintable()
    assert out.rejected[0].detail.endswith("symbol is empty")
    assert rejects_to_arrow(out.rejected).num_rows == 2


def test_an_unresolved_schema_id_is_still_a_bug_not_a_reject() -> None:
    with pytest.raises(KeyError):
        run([raw(0, b"\x00\x00\x00\x00\x42\x02")])  # id 66 was never resolved
