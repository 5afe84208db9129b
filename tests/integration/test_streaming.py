"""The streaming core end to end: replay -> Kafka -> `faust -A k2.app worker` -> Iceberg.

Run against both catalogs: the embedded SQLite one and the Iceberg REST catalog over S3.
Expectations are computed from the CSV files here, independently of K2's own parser.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from k2.admin.watermarks import end_offsets
from k2.lake.offsets import read_offsets
from tests.integration.k2env import K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SYDNEY = ZoneInfo("Australia/Sydney")


def sydney_to_utc(date: str, time_: str) -> datetime:
    local = datetime.strptime(f"{date} {time_}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY)
    return local.astimezone(UTC)


def expected(kind: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    """(symbol, sequence_number) -> values, straight from the CSVs."""
    with (SAMPLE / "reference-data" / "company_info.csv").open(newline="") as f:
        symbols = {row["company_id"]: row["symbol"] for row in csv.DictReader(f)}
    out: dict[tuple[str, int], tuple[Any, ...]] = {}
    for path in sorted((SAMPLE / kind).glob("*.csv")):
        symbol = symbols[path.stem]
        with path.open(newline="") as f:
            for seq, row in enumerate(csv.reader(f), start=1):
                ts = sydney_to_utc(row[0], row[1])
                if kind == "trades":
                    out[(symbol, seq)] = (ts, Decimal(row[2]), int(row[3]))
                else:
                    out[(symbol, seq)] = (ts, Decimal(row[2]), Decimal(row[3]), int(row[4]), int(row[5]))
    return out


@pytest.fixture(scope="module", params=["sqlite", pytest.param("rest", marks=pytest.mark.rest)])
def landed_sample(
    request: pytest.FixtureRequest, stack: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[K2Env]:
    """The bundled sample replayed into a running worker, landed in the lake."""
    env = K2Env(stack, tmp_path_factory.mktemp(f"stream-{request.param}"), request.param)
    if request.param == "rest":
        env.drop_tables()
    env.k2("init")
    env.start_worker()
    env.k2("replay", str(SAMPLE), "--no-progress")
    env.wait_landed()
    yield env
    env.close()


def test_the_law_holds(landed_sample: K2Env) -> None:
    assert_law(landed_sample)


def scan(env: K2Env, table: str) -> pa.Table:
    return env.catalog().load_table(table).scan().to_arrow()


def test_every_csv_row_lands_once_with_exact_prices_and_utc_times(landed_sample: K2Env) -> None:
    for kind, table in (("trades", "market_data.trades"), ("quotes", "market_data.quotes")):
        want = expected(kind)
        data = scan(landed_sample, table)
        assert data.num_rows == len(want)
        rows = data.to_pylist()
        got: dict[tuple[str, int], tuple[Any, ...]] = {}
        for r in rows:
            key = (r["symbol"], r["sequence_number"])
            assert key not in got, f"{key} landed twice"
            if kind == "trades":
                got[key] = (r["exchange_timestamp"], r["price"], r["volume"])
            else:
                got[key] = (r["exchange_timestamp"], r["bid_price"], r["ask_price"], r["bid_volume"], r["ask_volume"])
        assert got == want
        assert str(data.schema.field("price" if kind == "trades" else "bid_price").type) == "decimal128(18, 6)"
        positions = Counter(zip(data["kafka_partition"].to_pylist(), data["kafka_offset"].to_pylist(), strict=True))
        assert max(positions.values()) == 1


def test_spot_check_first_bhp_trade(landed_sample: K2Env) -> None:
    data = scan(landed_sample, "market_data.trades").to_pylist()
    first = next(r for r in data if r["symbol"] == "BHP" and r["sequence_number"] == 1)
    # 03/10/2014,07:57:14.754,36.667,20000,3,X, in Sydney daylight time (UTC+11)
    assert first["exchange_timestamp"] == datetime(2014, 3, 9, 20, 57, 14, 754000, tzinfo=UTC)
    assert first["price"] == Decimal("36.667000")
    assert (first["volume"], first["qualifiers"], first["venue"], first["company_id"]) == (20000, 3, "X", 7078)


def test_snapshot_summaries_hold_the_final_offsets(landed_sample: K2Env) -> None:
    env = landed_sample
    ends = end_offsets(env.settings, env.settings.source_topics)
    catalog = env.catalog()
    marks = {}
    for table in ("market_data.trades", "market_data.quotes", "reference_data.companies"):
        marks.update(read_offsets(catalog.load_table(table)))
    assert marks == {tp: end - 1 for tp, end in ends.items() if end > 0}
    snap = catalog.load_table("market_data.trades").current_snapshot()
    assert snap is not None and snap.summary is not None
    props = snap.summary.additional_properties
    assert props["k2.commit-id"] and props["k2.worker-id"]


def test_reference_data_is_one_row_per_company(landed_sample: K2Env) -> None:
    data = scan(landed_sample, "reference_data.companies").to_pylist()
    assert sorted(r["symbol"] for r in data) == ["BHP", "DVN", "MWR", "RIO"]
    bhp = next(r for r in data if r["symbol"] == "BHP")
    assert (bhp["company_id"], bhp["isin"], str(bhp["start_date"]), str(bhp["end_date"])) == (
        7078,
        "AU000000BHP4",
        "2008-05-07",
        "2014-03-31",
    )


def test_tables_are_day_partitioned_and_sorted(landed_sample: K2Env) -> None:
    table = landed_sample.catalog().load_table("market_data.trades")
    assert [f.transform.__class__.__name__ for f in table.spec().fields] == ["DayTransform"]
    days = {task.file.partition[0] for task in table.scan().plan_files()}
    epoch = datetime(1970, 1, 1, tzinfo=UTC).date()
    want = {(ts.date() - epoch).days for ts, *_ in expected("trades").values()}
    assert days == want  # UTC days: 9 March 2014 UTC is the morning of the 10th in Sydney
    assert table.properties["write.parquet.compression-codec"] == "zstd"
