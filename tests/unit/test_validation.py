"""Domain rules: each rule, its edges, and what is flagged rather than rejected."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.errors import DecodeError, InvalidValue
from k2.validation import (
    MAX_FUTURE_MS,
    MAX_INSTANT_MS,
    MAX_SYMBOL_LENGTH,
    MIN_EXCHANGE_TIMESTAMP_MS,
    MIN_INSTANT_MS,
    validate_quote,
    validate_reference,
    validate_trade,
)

from .lake_helpers import T0, company, quote, trade

NOW = T0 + 60_000


def problem_field(verdict: tuple[InvalidValue | None, bool]) -> str | None:
    problem, _ = verdict
    return None if problem is None else problem.field


def test_invalid_value_is_a_typed_reject_reason() -> None:
    problem, flagged = validate_trade(trade(price=Decimal("0")), NOW)
    assert isinstance(problem, InvalidValue)
    assert isinstance(problem, DecodeError)
    assert problem.reason == "invalid_value"
    assert (problem.field, problem.value) == ("price", Decimal("0"))
    assert "price" in str(problem)
    assert flagged is False


def test_valid_trade() -> None:
    assert validate_trade(trade(), NOW) == (None, False)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"price": Decimal("0")}, "price"),
        ({"price": Decimal("0.000000")}, "price"),
        ({"price": Decimal("-1")}, "price"),
        ({"volume": 0}, "volume"),
        ({"volume": -5}, "volume"),
        ({"symbol": ""}, "symbol"),
        ({"symbol": "  "}, "symbol"),
        ({"exchange_timestamp": MIN_EXCHANGE_TIMESTAMP_MS - 1}, "exchange_timestamp"),
        ({"exchange_timestamp": NOW + MAX_FUTURE_MS + 1}, "exchange_timestamp"),
        ({"exchange_timestamp": T0 // 1000}, "exchange_timestamp"),  # seconds sent as millis
    ],
)
def test_invalid_trades(overrides: dict[str, Any], field: str) -> None:
    assert problem_field(validate_trade(trade(**overrides), NOW)) == field


@pytest.mark.parametrize(
    "overrides",
    [
        {"price": Decimal("0.000001")},
        {"volume": 1},
        {"exchange_timestamp": MIN_EXCHANGE_TIMESTAMP_MS},
        {"exchange_timestamp": NOW + MAX_FUTURE_MS},
        {"exchange_timestamp": datetime(2025, 1, 1, tzinfo=UTC)},
        {"symbol": "A"},
    ],
)
def test_trade_edges_that_pass(overrides: dict[str, Any]) -> None:
    assert validate_trade(trade(**overrides), NOW) == (None, False)


def test_1990_boundary_is_the_documented_instant() -> None:
    assert datetime.fromtimestamp(MIN_EXCHANGE_TIMESTAMP_MS / 1000, UTC) == datetime(1990, 1, 1, tzinfo=UTC)


def test_valid_quote() -> None:
    assert validate_quote(quote(), NOW) == (None, False)


@pytest.mark.parametrize(
    "overrides",
    [
        {"bid_price": Decimal("0"), "bid_volume": 0},  # ask only
        {"ask_price": Decimal("0"), "ask_volume": 0},  # bid only
        {"bid_price": Decimal("0"), "bid_volume": 0, "ask_price": Decimal("0.000001")},
        {"bid_volume": 0, "ask_volume": 0},  # prices but no size: kept
        {"bid_price": Decimal("36.67"), "ask_price": Decimal("36.67")},  # locked: not crossed
    ],
)
def test_one_sided_and_edge_quotes_are_valid(overrides: dict[str, Any]) -> None:
    assert validate_quote(quote(**overrides), NOW) == (None, False)


def test_crossed_quote_is_flagged_not_rejected() -> None:
    assert validate_quote(quote(bid_price=Decimal("36.700000"), ask_price=Decimal("36.690000")), NOW) == (None, True)


def test_crossed_needs_both_sides() -> None:
    # bid > ask only because the ask side is empty: one-sided, not crossed.
    assert validate_quote(quote(ask_price=Decimal("0"), ask_volume=0), NOW) == (None, False)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bid_price": Decimal("0"), "ask_price": Decimal("0")}, "bid_price,ask_price"),
        ({"bid_price": Decimal("-0.000001")}, "bid_price"),
        ({"ask_price": Decimal("-1")}, "ask_price"),
        ({"bid_volume": -1}, "bid_volume"),
        ({"ask_volume": -1}, "ask_volume"),
        ({"symbol": ""}, "symbol"),
        ({"exchange_timestamp": MIN_EXCHANGE_TIMESTAMP_MS - 1}, "exchange_timestamp"),
        ({"exchange_timestamp": NOW + MAX_FUTURE_MS + 1}, "exchange_timestamp"),
    ],
)
def test_invalid_quotes(overrides: dict[str, Any], field: str) -> None:
    assert problem_field(validate_quote(quote(**overrides), NOW)) == field


def test_valid_reference() -> None:
    assert validate_reference(company(), NOW) == (None, False)
    assert validate_reference(company(end_date="2020-01-01")) == (None, False)
    assert validate_reference(company(end_date="1885-08-13")) == (None, False)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"company_id": 0}, "company_id"),
        ({"company_id": -3}, "company_id"),
        ({"symbol": ""}, "symbol"),
        ({"company_name": ""}, "company_name"),
        ({"company_name": " "}, "company_name"),
        ({"start_date": "18850813"}, "start_date"),
        ({"start_date": "2024-02-30"}, "start_date"),
        ({"start_date": ""}, "start_date"),
        ({"end_date": "2024-13-01"}, "end_date"),
        ({"end_date": "1800-01-01"}, "end_date"),  # before start_date
    ],
)
def test_invalid_reference(overrides: dict[str, Any], field: str) -> None:
    assert problem_field(validate_reference(company(**overrides), NOW)) == field


def test_validators_are_fast() -> None:
    import time

    records = [trade(exchange_timestamp=T0 + i) for i in range(20_000)]
    start = time.perf_counter()
    for r in records:
        validate_trade(r, NOW)
    assert time.perf_counter() - start < 1.0  # ~1 µs each in practice; generous for slow CI


# Found by fuzzing: an ingestion time the lake cannot hold (timestamptz is microseconds;
# 2**62 ms overflows it) was accepted and crashed the batch's Arrow conversion.
@pytest.mark.parametrize("validate", [validate_trade, validate_quote])
@pytest.mark.parametrize("ms", [2**62, -(2**63), 2**63 - 1, MAX_INSTANT_MS + 1, MIN_INSTANT_MS - 1])
def test_ingestion_time_the_lake_cannot_hold_is_invalid(validate: Any, ms: int) -> None:
    record = (trade if validate is validate_trade else quote)(ingestion_timestamp=ms)
    assert problem_field(validate(record, NOW)) == "ingestion_timestamp"


@pytest.mark.parametrize("ms", [MIN_INSTANT_MS, MAX_INSTANT_MS, 0, -1])
def test_ingestion_time_edges_pass(ms: int) -> None:
    assert validate_trade(trade(ingestion_timestamp=ms), NOW) == (None, False)
    assert datetime.fromtimestamp(MAX_INSTANT_MS / 1000, UTC).year == 9999
    assert datetime.fromtimestamp(MIN_INSTANT_MS / 1000, UTC) == datetime(1, 1, 1, tzinfo=UTC)


# A control character (NUL, newline, ...) in a ticker is a corrupted frame, not an instrument:
# the symbol keys sequence tracking and the reference data. (It would land: Arrow keeps it.)
@pytest.mark.parametrize("symbol", ["A\x00B", "BHP\n", "\x7f", "B\u200bHP"])
def test_symbol_with_control_characters_is_invalid(symbol: str) -> None:
    assert problem_field(validate_trade(trade(symbol=symbol), NOW)) == "symbol"
    assert problem_field(validate_quote(quote(symbol=symbol), NOW)) == "symbol"
    assert problem_field(validate_reference(company(symbol=symbol), NOW)) == "symbol"


def test_symbol_longer_than_an_instrument_code_is_invalid() -> None:
    # The symbol keys the sequence state (a changelog key) and the per-symbol metrics: a
    # 10 MB one decoded and was accepted.
    assert validate_trade(trade(symbol="X" * MAX_SYMBOL_LENGTH), NOW) == (None, False)
    assert problem_field(validate_trade(trade(symbol="X" * (MAX_SYMBOL_LENGTH + 1)), NOW)) == "symbol"
    assert problem_field(validate_reference(company(symbol="B" * 10_000_000), NOW)) == "symbol"
