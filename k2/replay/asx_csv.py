"""Pure parsing of the ASX sample files (no Kafka): trades, quotes and company reference data.

The files' quirks, as documented in the data's README and checked against the files:

* ``trades/<company_id>.csv``: no header, CRLF, ``Date,Time,Price,Volume,Qualifiers,Venue,BuyerID``.
* ``quotes/<company_id>.csv``: no header, CRLF, ``Date,Time,Bid,Ask,BidVolume,AskVolume``.
* ``reference-data/company_info.csv``: a header, dates ``MM/DD/YYYY``.
* Dates are ``MM/DD/YYYY``, times ``HH:MM:SS.fff`` in **Australia/Sydney local time**
  (daylight time, UTC+11, until the first Sunday of April 2014; UTC+10 after).

Every line either becomes a row or a :class:`MalformedLine` naming file, line and reason;
nothing is skipped silently. Prices are exact :class:`~decimal.Decimal` at scale 6 (the
contracts' ``decimal(18,6)``): a price with more than 6 decimals or more than 12 integer
digits cannot be represented, so it is malformed rather than rounded.

Speed: a whole line is validated by one regular expression; the local-time offset is
computed once per (date, hour) rather than per row; parsed prices are memoised (tick
prices repeat a lot). About 170k rows parse in well under a second.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Generic, NamedTuple, Protocol, TypeVar
from zoneinfo import ZoneInfo

__all__ = [
    "EXCHANGE",
    "SYDNEY",
    "LocalTimeConverter",
    "MalformedLine",
    "ParseResult",
    "Quote",
    "ReferenceRow",
    "Trade",
    "data_span_ms",
    "parse_decimal",
    "parse_quotes",
    "parse_quotes_file",
    "parse_reference",
    "parse_reference_file",
    "parse_trades",
    "parse_trades_file",
]

EXCHANGE = "ASX"
SYDNEY = ZoneInfo("Australia/Sydney")

_EPOCH = datetime(1970, 1, 1)  # naive; local wall time minus the UTC offset is naive UTC
_MS = timedelta(milliseconds=1)
_SCALE = Decimal("0.000001")
_MAX_INT_DIGITS = 12
_MAX_DECIMALS = 6


class Trade(NamedTuple):
    """One trades row, shaped like the ``Trade`` contract minus ``ingestion_timestamp`` (set at send time)."""

    symbol: str
    company_id: int
    exchange: str
    exchange_timestamp: int  # UTC epoch milliseconds
    price: Decimal
    volume: int
    qualifiers: int
    venue: str
    buyer_id: str | None
    sequence_number: int


class Quote(NamedTuple):
    """One quotes row, shaped like the ``Quote`` contract minus ``ingestion_timestamp``."""

    symbol: str
    company_id: int
    exchange: str
    exchange_timestamp: int  # UTC epoch milliseconds
    bid_price: Decimal
    bid_volume: int
    ask_price: Decimal
    ask_volume: int
    sequence_number: int


class ReferenceRow(NamedTuple):
    """One company of ``company_info.csv``, shaped exactly like the ``ReferenceData`` contract."""

    company_id: int
    symbol: str
    company_name: str
    isin: str
    start_date: str  # ISO YYYY-MM-DD
    end_date: str | None  # ISO YYYY-MM-DD, None while listed


@dataclass(frozen=True)
class MalformedLine:
    """A line that could not become a row, kept so it can be reported as ``file:line: reason``."""

    file: str
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line_number}: {self.reason}"


_Row = TypeVar("_Row")


@dataclass
class ParseResult(Generic[_Row]):
    """The rows of one file in file order, and its malformed lines."""

    rows: list[_Row] = field(default_factory=list)
    malformed: list[MalformedLine] = field(default_factory=list)


class _Timestamped(Protocol):
    @property
    def exchange_timestamp(self) -> int: ...


class _BadField(ValueError):
    """A field that does not parse; its message is the reason reported for the line."""


class LocalTimeConverter:
    """Local wall time (``MM/DD/YYYY``, ``HH:MM:SS[.fff]``) to UTC epoch millis, fast and DST-correct.

    The UTC offset is looked up once per (date, hour). Zone transitions happen on the hour
    in Sydney, so the offset is constant within a local hour; if an hour ever contains a
    transition, rows of that hour fall back to an exact per-row lookup. A wall time the
    clocks skip or repeat is resolved with ``fold=0`` (the offset in force before the change).
    """

    def __init__(self, tz: ZoneInfo = SYDNEY) -> None:
        self._tz = tz
        self._hour_base: dict[tuple[str, str], int | None] = {}

    def to_epoch_ms(self, date: str, time: str) -> int:
        """Epoch millis of a local date and time; raises ValueError on an impossible date or time."""
        hh, mm, ss, frac = _split_time(time)
        key = (date, hh)
        base = self._hour_base.get(key, -1)
        if base == -1:
            try:
                base = self._compute_hour_base(date, int(hh))
            except ValueError as exc:  # e.g. 02/30/2014 or hour 24
                raise ValueError(f"no such local time {date} {time}: {exc}") from exc
            self._hour_base[key] = base
        minute, second = int(mm), int(ss)
        if minute > 59 or second > 59:
            raise ValueError(f"time {time!r} out of range")
        millis = int(frac.ljust(3, "0")) if frac else 0
        if base is None:  # an hour with a zone transition inside it
            month, day, year = _split_date(date)
            naive = datetime(year, month, day, int(hh), minute, second, millis * 1000)
            return self._naive_local_to_ms(naive)
        return base + minute * 60_000 + second * 1000 + millis

    def _compute_hour_base(self, date: str, hour: int) -> int | None:
        month, day, year = _split_date(date)
        start = datetime(year, month, day, hour)
        end = start.replace(minute=59, second=59, microsecond=999_000)
        if start.replace(tzinfo=self._tz).utcoffset() != end.replace(tzinfo=self._tz).utcoffset():
            return None
        return self._naive_local_to_ms(start)

    def _naive_local_to_ms(self, naive: datetime) -> int:
        offset = naive.replace(tzinfo=self._tz, fold=0).utcoffset()
        assert offset is not None  # a ZoneInfo always has an offset
        return (naive - offset - _EPOCH) // _MS


def _split_date(date: str) -> tuple[int, int, int]:
    """``MM/DD/YYYY`` -> (month, day, year); ValueError unless exactly that shape."""
    if len(date) != 10 or date[2] != "/" or date[5] != "/" or not (date[:2] + date[3:5] + date[6:]).isdigit():
        raise ValueError(f"date {date!r} is not MM/DD/YYYY")
    return int(date[:2]), int(date[3:5]), int(date[6:])


def _split_time(time: str) -> tuple[str, str, str, str]:
    """``HH:MM:SS[.f{1,3}]`` -> its four digit strings; ValueError unless exactly that shape."""
    frac = ""
    if len(time) > 8:
        frac = time[9:]
        if time[8] != "." or not 1 <= len(frac) <= 3 or not frac.isdigit():
            raise ValueError(f"time {time!r} is not HH:MM:SS.fff")
    if len(time) < 8 or time[2] != ":" or time[5] != ":" or not (time[:2] + time[3:5] + time[6:8]).isdigit():
        raise ValueError(f"time {time!r} is not HH:MM:SS.fff")
    return time[:2], time[3:5], time[6:8], frac


def _iso_date(date: str) -> str:
    """``MM/DD/YYYY`` -> ``YYYY-MM-DD``, checking the date exists."""
    month, day, year = _split_date(date)
    return datetime(year, month, day, tzinfo=UTC).date().isoformat()


_DECIMAL_RE = re.compile(r"(\d+)(?:\.(\d+))?")


def parse_decimal(text: str, what: str = "price") -> Decimal:
    """An exact non-negative decimal at scale 6; ValueError if it has >6 decimals or >12 integer digits."""
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise _BadField(f"{what} {text!r} is not a non-negative decimal number")
    integer, fraction = match.groups()
    if len(integer.lstrip("0")) > _MAX_INT_DIGITS:
        raise _BadField(f"{what} {text!r} has more than {_MAX_INT_DIGITS} integer digits")
    if fraction is not None and len(fraction) > _MAX_DECIMALS:
        raise _BadField(f"{what} {text!r} has more than {_MAX_DECIMALS} decimal places")
    try:
        return Decimal(text).quantize(_SCALE)
    except InvalidOperation as exc:  # pragma: no cover - excluded by the checks above
        raise _BadField(f"{what} {text!r} is not representable as decimal(18,6)") from exc


def _parse_count(text: str, what: str, max_digits: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise _BadField(f"{what} {text!r} is not a non-negative integer")
    if len(text.lstrip("0")) > max_digits:
        raise _BadField(f"{what} {text!r} is too large")
    return int(text)


# Fast path: a line that matches is well-formed except perhaps for an impossible
# date/time (checked by the converter). Volumes fit a long (18 digits), qualifiers an int.
_DT = r"(\d\d/\d\d/\d{4}),(\d\d:\d\d:\d\d(?:\.\d{1,3})?)"
_PRICE = r"(\d{1,12}(?:\.\d{1,6})?)"
_TRADE_RE = re.compile(_DT + "," + _PRICE + r",(\d{1,18}),(\d{1,9}),([^,]*),([^,]*)")
_QUOTE_RE = re.compile(_DT + "," + _PRICE + "," + _PRICE + r",(\d{1,18}),(\d{1,18})")

_TRADE_FIELDS = ("date", "time", "price", "volume", "qualifiers", "venue", "buyer_id")
_QUOTE_FIELDS = ("date", "time", "bid", "ask", "bid_volume", "ask_volume")


def _diagnose(parts: list[str], names: tuple[str, ...], clock: LocalTimeConverter) -> str:
    """Why a line failed the fast path: the first field that does not parse, in column order."""
    if len(parts) != len(names):
        return f"expected {len(names)} comma-separated fields ({','.join(names)}), got {len(parts)}"
    try:
        _split_date(parts[0])  # report a bad date before a bad time
        clock.to_epoch_ms(parts[0], parts[1])
        for name, text in zip(names[2:], parts[2:], strict=True):
            if name in ("price", "bid", "ask"):
                parse_decimal(text, name)
            elif name == "qualifiers":
                _parse_count(text, name, 9)
            elif name not in ("venue", "buyer_id"):
                _parse_count(text, name, 18)
    except ValueError as exc:
        return str(exc)
    return "line does not match the expected format"  # pragma: no cover - the checks mirror the regex


def _lines(path: Path) -> Iterator[str]:
    # newline="" keeps the CRLF so that a stray bare CR inside a line is not taken as a line end.
    with path.open(encoding="utf-8", newline="") as handle:
        yield from handle


def parse_trades(lines: Iterable[str], *, symbol: str, company_id: int, file: str) -> ParseResult[Trade]:
    """Parse trades lines (no header; CRLF or LF) of one company; rows numbered 1, 2, 3... in file order.

    Sequence numbers count good rows only, so the feed has no gaps; malformed lines are in
    the result's ``malformed`` list with their 1-based line numbers.
    """
    result: ParseResult[Trade] = ParseResult()
    clock = LocalTimeConverter()
    prices: dict[str, Decimal] = {}
    match_line = _TRADE_RE.fullmatch
    append = result.rows.append
    seq = 0
    for line_number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        match = match_line(line)
        if match is None:
            reason = "empty line" if not line else _diagnose(line.split(","), _TRADE_FIELDS, clock)
            result.malformed.append(MalformedLine(file, line_number, reason))
            continue
        date, time, price_text, volume, qualifiers, venue, buyer = match.groups()
        try:
            ts = clock.to_epoch_ms(date, time)
        except ValueError as exc:
            result.malformed.append(MalformedLine(file, line_number, str(exc)))
            continue
        price = prices.get(price_text)
        if price is None:
            price = prices[price_text] = Decimal(price_text).quantize(_SCALE)
        seq += 1
        append(Trade(symbol, company_id, EXCHANGE, ts, price, int(volume), int(qualifiers), venue, buyer or None, seq))
    return result


def parse_quotes(lines: Iterable[str], *, symbol: str, company_id: int, file: str) -> ParseResult[Quote]:
    """Parse quotes lines (no header; ``Date,Time,Bid,Ask,BidVolume,AskVolume``), numbered like trades.

    A price of 0 means that side of the book is empty; it is kept as ``Decimal('0.000000')``.
    """
    result: ParseResult[Quote] = ParseResult()
    clock = LocalTimeConverter()
    prices: dict[str, Decimal] = {}
    match_line = _QUOTE_RE.fullmatch
    append = result.rows.append
    seq = 0
    for line_number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        match = match_line(line)
        if match is None:
            reason = "empty line" if not line else _diagnose(line.split(","), _QUOTE_FIELDS, clock)
            result.malformed.append(MalformedLine(file, line_number, reason))
            continue
        date, time, bid_text, ask_text, bid_volume, ask_volume = match.groups()
        try:
            ts = clock.to_epoch_ms(date, time)
        except ValueError as exc:
            result.malformed.append(MalformedLine(file, line_number, str(exc)))
            continue
        bid = prices.get(bid_text)
        if bid is None:
            bid = prices[bid_text] = Decimal(bid_text).quantize(_SCALE)
        ask = prices.get(ask_text)
        if ask is None:
            ask = prices[ask_text] = Decimal(ask_text).quantize(_SCALE)
        seq += 1
        append(Quote(symbol, company_id, EXCHANGE, ts, bid, int(bid_volume), ask, int(ask_volume), seq))
    return result


_REFERENCE_HEADER = ("company_id", "symbol", "company_name", "isin", "start_date", "end_date")


def parse_reference(lines: Iterable[str], *, file: str) -> ParseResult[ReferenceRow]:
    """Parse ``company_info.csv`` (header required; quoted fields allowed; dates MM/DD/YYYY -> ISO).

    A missing or different header makes *every* line suspect, so it is reported as a
    malformed line 1 and nothing else is parsed.
    """
    result: ParseResult[ReferenceRow] = ParseResult()
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != _REFERENCE_HEADER:
        reason = f"expected header {','.join(_REFERENCE_HEADER)} (any case), got {','.join(header or [])!r}"
        result.malformed.append(MalformedLine(file, 1, reason))
        return result
    for parts in reader:
        line_number = reader.line_num
        try:
            result.rows.append(_reference_row(parts))
        except ValueError as exc:
            result.malformed.append(MalformedLine(file, line_number, str(exc)))
    return result


def _reference_row(parts: list[str]) -> ReferenceRow:
    if len(parts) != len(_REFERENCE_HEADER):
        raise ValueError(f"expected {len(_REFERENCE_HEADER)} fields, got {len(parts)}")
    company_id, symbol, name, isin, start, end = (p.strip() for p in parts)
    if not company_id.isdigit():
        raise ValueError(f"company_id {company_id!r} is not a positive integer")
    if int(company_id) > 2**31 - 1:
        raise ValueError(f"company_id {company_id!r} does not fit an int")
    if not symbol:
        raise ValueError("symbol is empty")
    if not isin:
        raise ValueError("ISIN is empty")
    try:
        start_iso = _iso_date(start)
        end_iso = _iso_date(end) if end else None
    except ValueError as exc:
        raise ValueError(f"bad date: {exc}") from exc
    return ReferenceRow(int(company_id), symbol, name, isin, start_iso, end_iso)


def parse_trades_file(path: Path, *, symbol: str, company_id: int, name: str | None = None) -> ParseResult[Trade]:
    """:func:`parse_trades` on a file; ``name`` (default: the path) is used in malformed-line reports."""
    return parse_trades(_lines(path), symbol=symbol, company_id=company_id, file=name or str(path))


def parse_quotes_file(path: Path, *, symbol: str, company_id: int, name: str | None = None) -> ParseResult[Quote]:
    """:func:`parse_quotes` on a file; ``name`` (default: the path) is used in malformed-line reports."""
    return parse_quotes(_lines(path), symbol=symbol, company_id=company_id, file=name or str(path))


def parse_reference_file(path: Path, *, name: str | None = None) -> ParseResult[ReferenceRow]:
    """:func:`parse_reference` on a file; ``name`` (default: the path) is used in malformed-line reports."""
    return parse_reference(_lines(path), file=name or str(path))


def data_span_ms(*streams: Iterable[_Timestamped]) -> int:
    """Latest minus earliest ``exchange_timestamp`` over all rows given (0 when there are none).

    ``--loop`` shifts pass *i* by ``i * (span + 1)`` ms so that every looped event is
    strictly later than every event of the pass before.
    """
    low: int | None = None
    high: int | None = None
    for stream in streams:
        for row in stream:
            ts = row.exchange_timestamp
            if low is None or ts < low:
                low = ts
            if high is None or ts > high:
                high = ts
    return 0 if low is None or high is None else high - low
