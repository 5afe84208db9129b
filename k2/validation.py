"""Domain rules a decoded event must meet before it is landed. Pure and cheap: called per event.

Every validator has one shape, ``(record, now_ms) -> (problem, flagged)``
(:data:`Verdict`, what :data:`k2.ingest.classify.Validator` expects): ``problem`` is
an :class:`~k2.errors.InvalidValue` *returned*, not raised (errors as data, the
dead-letter shape), which the caller routes to the rejects path with
``reason = "invalid_value"``; ``flagged`` marks a valid but notable event (a crossed
quote) to count. Plain comparisons only, and the common verdicts are preallocated
tuples: the Avro contract already guarantees types and required fields.

``now_ms`` is a parameter (epoch milliseconds) so the time window is testable and one
clock read serves a whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import InvalidValue
from k2.settings import DAY_MS

__all__ = [
    "MAX_FUTURE_MS",
    "MAX_INSTANT_MS",
    "MAX_SYMBOL_LENGTH",
    "MIN_EXCHANGE_TIMESTAMP_MS",
    "MIN_INSTANT_MS",
    "Verdict",
    "quote_rows",
    "trade_rows",
    "validate_quote",
    "validate_reference",
    "validate_trade",
]

MIN_EXCHANGE_TIMESTAMP_MS = 631_152_000_000
"""1990-01-01T00:00:00Z: nothing older is a live ASX tick (catches seconds-for-millis bugs)."""
MAX_FUTURE_MS = DAY_MS
"""How far ahead of ``now_ms`` an exchange timestamp may be (clock skew, time zones mistaken for UTC)."""
MIN_INSTANT_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z, and :data:`MAX_INSTANT_MS` 9999-12-31T23:59:59.999Z: the instants a
timestamp column can hold and every reader can read back (a Python ``datetime``; the
``timestamptz`` column itself, in microseconds, overflows from about year 294,000)."""
MAX_INSTANT_MS = 253_402_300_799_999
MAX_SYMBOL_LENGTH = 64
"""Longest symbol, in characters (ASX codes have up to 6): a symbol keys sequence state and metrics."""

_ZERO = Decimal(0)  # comparing a Decimal with a Decimal is cheaper than with the int 0


Verdict = tuple[InvalidValue | None, bool]
"""``(problem, flagged)``: the broken rule or None, and whether a valid event is notable (a crossed quote)."""

_OK: Verdict = (None, False)
_FLAGGED: Verdict = (None, True)


def _epoch_ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _check_symbol(record: Mapping[str, Any]) -> InvalidValue | None:
    symbol = record["symbol"]
    if not symbol or symbol.isspace():
        return InvalidValue("symbol", symbol, "symbol is empty")
    if len(symbol) > MAX_SYMBOL_LENGTH:
        return InvalidValue("symbol", symbol, f"symbol longer than {MAX_SYMBOL_LENGTH} characters")
    if not symbol.isprintable():  # NUL, newline, zero-width...: a corrupted frame, and the symbol is a key
        return InvalidValue("symbol", symbol, "symbol has control or invisible characters")
    return None


def _check_time(record: Mapping[str, Any], now_ms: int) -> InvalidValue | None:
    ts = record["exchange_timestamp"]
    ms = ts if type(ts) is int else _epoch_ms(ts)
    if ms < MIN_EXCHANGE_TIMESTAMP_MS:
        return InvalidValue("exchange_timestamp", ts, "before 1990-01-01T00:00:00Z")
    if ms > now_ms + MAX_FUTURE_MS:
        return InvalidValue("exchange_timestamp", ts, "more than one day in the future")
    ingested = record["ingestion_timestamp"]
    if type(ingested) is int and not MIN_INSTANT_MS <= ingested <= MAX_INSTANT_MS:
        return InvalidValue("ingestion_timestamp", ingested, "not an instant between years 1 and 9999")
    return None


def validate_trade(record: Mapping[str, Any], now_ms: int) -> Verdict:
    """A trade must have price > 0, volume > 0, a symbol and sane times; never flagged."""
    price = record["price"]
    if not price > _ZERO:
        return InvalidValue("price", price, "price must be > 0"), False
    volume = record["volume"]
    if not volume > 0:
        return InvalidValue("volume", volume, "volume must be > 0"), False
    invalid = _check_symbol(record) or _check_time(record, now_ms)
    return _OK if invalid is None else (invalid, False)


def validate_quote(record: Mapping[str, Any], now_ms: int) -> Verdict:
    """A quote's prices and volumes must be >= 0, with at least one side present; flagged when crossed.

    A price of 0 means that side is empty (one-sided quotes are valid). A crossed
    quote (both sides present, bid > ask) is a real, transient market state: valid,
    landed, and flagged so it can be counted.
    """
    bid, ask = record["bid_price"], record["ask_price"]
    if bid < _ZERO:
        return InvalidValue("bid_price", bid, "price must be >= 0"), False
    if ask < _ZERO:
        return InvalidValue("ask_price", ask, "price must be >= 0"), False
    if record["bid_volume"] < 0:
        return InvalidValue("bid_volume", record["bid_volume"], "volume must be >= 0"), False
    if record["ask_volume"] < 0:
        return InvalidValue("ask_volume", record["ask_volume"], "volume must be >= 0"), False
    if not bid and not ask:
        return InvalidValue("bid_price,ask_price", (bid, ask), "both sides empty (prices are 0)"), False
    invalid = _check_symbol(record) or _check_time(record, now_ms)
    if invalid is not None:
        return invalid, False
    return _FLAGGED if bid and ask and bid > ask else _OK


def _iso_date(value: str) -> date | None:
    """``YYYY-MM-DD`` strictly (``date.fromisoformat`` alone also takes ``YYYYMMDD``, weeks...)."""
    if len(value) != 10 or value[4] != "-" or value[7] != "-":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def validate_reference(record: Mapping[str, Any], now_ms: int = 0) -> Verdict:
    """Reference data needs company_id > 0, a symbol, a name and ISO dates in order; never flagged.

    ``now_ms`` is unused: it is there so every validator has one shape.
    """
    company_id = record["company_id"]
    if not company_id > 0:
        return InvalidValue("company_id", company_id, "company_id must be > 0"), False
    invalid = _check_symbol(record)
    if invalid is not None:
        return invalid, False
    name = record["company_name"]
    if not name or name.isspace():
        return InvalidValue("company_name", name, "company_name is empty"), False
    start = _iso_date(record["start_date"])
    if start is None:
        return InvalidValue("start_date", record["start_date"], "not an ISO date YYYY-MM-DD"), False
    end_text = record.get("end_date")
    if end_text is not None:
        end = _iso_date(end_text)
        if end is None:
            return InvalidValue("end_date", end_text, "not an ISO date YYYY-MM-DD"), False
        if end < start:
            return InvalidValue("end_date", end_text, "end_date is before start_date"), False
    return _OK


# -- the same rules, in columns, for the batch path (k2.ingest.fast) ------------------------------
#
# Each function below is a *sufficient* condition for its validator above: a row it passes is a
# row the validator passes (and flags the same way). It may turn down rows the validator would
# pass (a symbol with a space in the middle, say): those are decided one by one by the validator.

_PLAIN_SYMBOL = rf"^[!-~]{{1,{MAX_SYMBOL_LENGTH}}}$"
"""1 to 64 printable ASCII characters, none a space: not empty, not blank, printable, short enough."""


def _columns(table: pa.Table, ints: tuple[str, ...], decimals: tuple[str, ...]) -> bool:
    """Whether ``table`` has the columns the rules read, of the types they read (as the batch decoder gives them)."""
    names = set(table.column_names)
    if "symbol" not in names or not pa.types.is_large_string(table.schema.field("symbol").type):
        return False
    for name in ints:
        if name not in names or not pa.types.is_int64(table.schema.field(name).type):
            return False
    return all(name in names and pa.types.is_decimal(table.schema.field(name).type) for name in decimals)


def _zero(column: pa.ChunkedArray) -> pa.Scalar:
    return pa.scalar(_ZERO, column.type)


def _symbol_and_times(table: pa.Table, now_ms: int) -> pa.ChunkedArray:
    """What :func:`_check_symbol` and :func:`_check_time` pass, as a sufficient condition per row."""
    ts, ingested = table["exchange_timestamp"], table["ingestion_timestamp"]
    return pc.and_(
        pc.and_(
            pc.match_substring_regex(table["symbol"], _PLAIN_SYMBOL),
            pc.and_(pc.greater_equal(ts, MIN_EXCHANGE_TIMESTAMP_MS), pc.less_equal(ts, now_ms + MAX_FUTURE_MS)),
        ),
        pc.and_(pc.greater_equal(ingested, MIN_INSTANT_MS), pc.less_equal(ingested, MAX_INSTANT_MS)),
    )


def _mask(condition: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(condition, False).to_numpy(zero_copy_only=False), dtype=bool)


def trade_rows(table: pa.Table, now_ms: int) -> tuple[np.ndarray, int] | None:
    """Rows :func:`validate_trade` certainly passes (never flagged), or None if the columns are not a trade's."""
    if not _columns(table, ("volume", "exchange_timestamp", "ingestion_timestamp"), ("price",)):
        return None
    price, volume = table["price"], table["volume"]
    ok = pc.and_(pc.and_(pc.greater(price, _zero(price)), pc.greater(volume, 0)), _symbol_and_times(table, now_ms))
    return _mask(ok), 0


def quote_rows(table: pa.Table, now_ms: int) -> tuple[np.ndarray, int] | None:
    """Rows :func:`validate_quote` certainly passes, and how many of them it flags (crossed), or None."""
    if not _columns(
        table,
        ("bid_volume", "ask_volume", "exchange_timestamp", "ingestion_timestamp"),
        ("bid_price", "ask_price"),
    ):
        return None
    bid, ask = table["bid_price"], table["ask_price"]
    bid_side, ask_side = pc.greater(bid, _zero(bid)), pc.greater(ask, _zero(ask))
    sides = pc.and_(
        pc.and_(pc.greater_equal(bid, _zero(bid)), pc.greater_equal(ask, _zero(ask))),
        pc.or_(bid_side, ask_side),
    )
    volumes = pc.and_(pc.greater_equal(table["bid_volume"], 0), pc.greater_equal(table["ask_volume"], 0))
    ok = _mask(pc.and_(pc.and_(sides, volumes), _symbol_and_times(table, now_ms)))
    crossed = _mask(pc.and_(pc.and_(bid_side, ask_side), pc.greater(bid, ask)))
    return ok, int(np.count_nonzero(ok & crossed))
