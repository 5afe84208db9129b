"""Parsing the ASX files: layout, Sydney time, exact prices, malformed lines, numbering, span."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from k2.replay.asx_csv import (
    LocalTimeConverter,
    MalformedLine,
    Quote,
    Trade,
    data_span_ms,
    parse_decimal,
    parse_quotes,
    parse_quotes_file,
    parse_reference,
    parse_reference_file,
    parse_trades,
    parse_trades_file,
)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


def trades(*lines: str) -> list[str]:
    return [line + "\r\n" for line in lines]


def test_sydney_daylight_time_example_from_the_readme() -> None:
    # March 2014: daylight time, UTC+11.
    assert LocalTimeConverter().to_epoch_ms("03/10/2014", "10:00:00.000") == ms("2014-03-09T23:00:00")


def test_sydney_standard_time_after_dst_ended_in_april() -> None:
    # DST ended on Sunday 6 April 2014: UTC+10 from then on.
    assert LocalTimeConverter().to_epoch_ms("04/07/2014", "10:00:00.000") == ms("2014-04-07T00:00:00")


def test_dst_end_day_hour_by_hour() -> None:
    clock = LocalTimeConverter()
    assert clock.to_epoch_ms("04/06/2014", "01:59:59.999") == ms("2014-04-05T14:59:59.999")
    # 02:00-02:59 happens twice; fold=0 takes the first (daylight) one.
    assert clock.to_epoch_ms("04/06/2014", "02:30:00.000") == ms("2014-04-05T15:30:00")
    assert clock.to_epoch_ms("04/06/2014", "03:00:00.000") == ms("2014-04-05T17:00:00")


def test_milliseconds_and_short_fractions() -> None:
    clock = LocalTimeConverter()
    base = clock.to_epoch_ms("03/10/2014", "07:57:14")
    assert clock.to_epoch_ms("03/10/2014", "07:57:14.754") == base + 754
    assert clock.to_epoch_ms("03/10/2014", "07:57:14.7") == base + 700


def test_trade_columns_in_order() -> None:
    result = parse_trades(
        trades("03/10/2014,07:57:14.754,36.667,20000,3,X,B12"), symbol="BHP", company_id=7078, file="t"
    )
    assert result.malformed == []
    assert result.rows == [
        Trade("BHP", 7078, "ASX", ms("2014-03-09T20:57:14.754"), Decimal("36.667000"), 20000, 3, "X", "B12", 1)
    ]


def test_trade_empty_venue_and_buyer() -> None:
    (row,) = parse_trades(trades("03/10/2014,13:50:38.849,1.11,3667,0,,"), symbol="MWR", company_id=3153, file="t").rows
    assert row.venue == ""
    assert row.buyer_id is None


def test_quote_columns_prices_before_volumes() -> None:
    result = parse_quotes(trades("03/10/2014,05:43:45.676,37.7,0.0,300,0"), symbol="BHP", company_id=7078, file="q")
    assert result.rows == [
        Quote("BHP", 7078, "ASX", ms("2014-03-09T18:43:45.676"), Decimal("37.7"), 300, Decimal("0"), 0, 1)
    ]
    assert str(result.rows[0].ask_price) == "0.000000"


def test_prices_are_exact_decimals_at_scale_6() -> None:
    assert str(parse_decimal("36.667")) == "36.667000"
    assert parse_decimal("0.1") + parse_decimal("0.2") == Decimal("0.3")
    assert str(parse_decimal("999999999999.999999")) == "999999999999.999999"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.1234567", "more than 6 decimal places"),
        ("1234567890123", "more than 12 integer digits"),
        ("-1.5", "not a non-negative decimal"),
        ("1e3", "not a non-negative decimal"),
        ("", "not a non-negative decimal"),
    ],
)
def test_unrepresentable_prices_are_rejected(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_decimal(text)


def test_crlf_lf_and_no_header() -> None:
    lines = ["03/10/2014,10:00:00.000,1.5,10,0,,\r\n", "03/10/2014,10:00:01.000,1.6,10,0,,\n"]
    result = parse_trades(lines, symbol="S", company_id=1, file="t")
    assert [r.price for r in result.rows] == [Decimal("1.5"), Decimal("1.6")]


def test_malformed_lines_are_reported_with_file_line_and_reason_and_not_numbered() -> None:
    lines = trades(
        "03/10/2014,10:00:00.000,1.5,10,0,,",  # 1 ok
        "Date,Time,Price,Volume,Qualifiers,Venue,BuyerID",  # 2 a header is not data
        "03/10/2014,10:00:00.000,1.1234567,10,0,,",  # 3 too many decimals
        "03/10/2014,10:00:00.000,1.5,10,0",  # 4 fields missing
        "02/30/2014,10:00:00.000,1.5,10,0,,",  # 5 no such date
        "03/10/2014,25:00:00.000,1.5,10,0,,",  # 6 no such hour
        "03/10/2014,10:61:00.000,1.5,10,0,,",  # 7 no such minute
        "",  # 8 empty
        "03/10/2014,10:00:01.000,1.5,-10,0,,",  # 9 negative volume
        "03/10/2014,10:00:02.000,1.6,10,0,,",  # 10 ok
    )
    result = parse_trades(lines, symbol="S", company_id=1, file="trades/1.csv")
    assert [r.sequence_number for r in result.rows] == [1, 2]
    assert [(m.file, m.line_number) for m in result.malformed] == [
        ("trades/1.csv", n) for n in (2, 3, 4, 5, 6, 7, 8, 9)
    ]
    reasons = [m.reason for m in result.malformed]
    assert "date 'Date' is not MM/DD/YYYY" in reasons[0]
    assert "more than 6 decimal places" in reasons[1]
    assert "expected 7 comma-separated fields" in reasons[2]
    assert "no such local time" in reasons[3]
    assert "no such local time" in reasons[4]
    assert "out of range" in reasons[5]
    assert reasons[6] == "empty line"
    assert "volume '-10'" in reasons[7]
    assert str(result.malformed[0]).startswith("trades/1.csv:2: ")


def test_malformed_quote_line() -> None:
    result = parse_quotes(trades("03/10/2014,10:00:00.000,1.5,x,1,1"), symbol="S", company_id=1, file="q")
    assert result.rows == []
    assert result.malformed == [MalformedLine("q", 1, "ask 'x' is not a non-negative decimal number")]


def test_sequence_numbers_per_file_in_file_order() -> None:
    t = parse_trades_file(SAMPLE / "trades" / "7181.csv", symbol="DVN", company_id=7181)
    q = parse_quotes_file(SAMPLE / "quotes" / "7181.csv", symbol="DVN", company_id=7181)
    assert [r.sequence_number for r in t.rows] == list(range(1, 233))
    assert [r.sequence_number for r in q.rows] == list(range(1, 550))
    assert t.malformed == q.malformed == []


def test_sample_files_parse_completely() -> None:
    for company_id, n_trades, n_quotes in ((3153, 11, 60), (7078, 2000, 2000), (7181, 232, 549)):
        t = parse_trades_file(SAMPLE / "trades" / f"{company_id}.csv", symbol="X", company_id=company_id)
        q = parse_quotes_file(SAMPLE / "quotes" / f"{company_id}.csv", symbol="X", company_id=company_id)
        assert (len(t.rows), len(t.malformed), len(q.rows), len(q.malformed)) == (n_trades, 0, n_quotes, 0)
    first = parse_trades_file(SAMPLE / "trades" / "7078.csv", symbol="BHP", company_id=7078).rows[0]
    assert first.price == Decimal("36.667000")
    assert first.exchange_timestamp == ms("2014-03-09T20:57:14.754")


def test_reference_data_with_header_and_iso_dates() -> None:
    result = parse_reference_file(SAMPLE / "reference-data" / "company_info.csv")
    assert result.malformed == []
    assert [r.symbol for r in result.rows] == ["MWR", "BHP", "DVN", "RIO"]
    mwr = result.rows[0]
    assert (mwr.company_id, mwr.company_name, mwr.isin) == (3153, "MGM WIRELESS LTD", "AU000000MWR6")
    assert (mwr.start_date, mwr.end_date) == ("2003-11-06", "2014-03-31")


def test_reference_empty_end_date_is_none_and_bad_rows_reported() -> None:
    lines = [
        "company_id,symbol,company_name,ISIN,start_date,end_date\r\n",
        '1,AAA,"ACME, LTD",AU0000000001,01/02/2010,\r\n',
        "x,BBB,B,AU0000000002,01/02/2010,\r\n",
        "3,CCC,C,AU0000000003,2010-01-02,\r\n",
    ]
    result = parse_reference(lines, file="ref.csv")
    assert len(result.rows) == 1
    assert result.rows[0].company_name == "ACME, LTD"
    assert result.rows[0].end_date is None
    assert [(m.line_number, m.reason.split(" ")[0]) for m in result.malformed] == [(3, "company_id"), (4, "bad")]


def test_reference_without_header_is_reported() -> None:
    result = parse_reference(["3153,MWR,MGM WIRELESS LTD,AU000000MWR6,11/06/2003,03/31/2014\r\n"], file="r")
    assert result.rows == []
    assert result.malformed[0].line_number == 1
    assert "expected header" in result.malformed[0].reason


def test_data_span() -> None:
    t = parse_trades(
        trades("03/10/2014,10:00:00.000,1,1,0,,", "03/10/2014,10:00:05.000,1,1,0,,"), symbol="A", company_id=1, file="t"
    )
    q = parse_quotes(trades("03/10/2014,09:59:59.999,1,1,1,1"), symbol="A", company_id=1, file="q")
    assert data_span_ms(t.rows, q.rows) == 5001
    assert data_span_ms(t.rows[:1]) == 0
    assert data_span_ms() == 0


def test_full_bhp_files_parse_without_a_malformed_line() -> None:
    """The whole BHP sample (~170k rows, beside the repository as ``shared/``) parses cleanly.

    Speed is a benchmark's business, not a unit test's: no timing is asserted here.
    """
    full = Path(os.environ.get("K2_ASX_DATA", Path(__file__).resolve().parents[3] / "shared/data/asx-2014-03"))
    t = parse_trades_file(full / "trades" / "7078.csv", symbol="BHP", company_id=7078)
    q = parse_quotes_file(full / "quotes" / "7078.csv", symbol="BHP", company_id=7078)
    assert (len(t.rows), len(q.rows), t.malformed, q.malformed) == (91631, 77849, [], [])
