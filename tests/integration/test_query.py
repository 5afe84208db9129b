"""`k2 query`: the README's OHLCV example, run on the replayed sample, against bars computed by hand from the CSV."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest

from tests.integration.k2env import K2Env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
SYDNEY = ZoneInfo("Australia/Sydney")


def readme_example() -> list[str]:
    """The arguments of the ``k2 query`` command in README's example block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- k2-query-example.*?```sh\n(.*?)```", text, re.S)
    assert block, "README lost its k2 query example"
    command = " ".join(line.strip() for line in block.group(1).splitlines())
    args = shlex.split(command)
    assert args[:2] == ["k2", "query"]
    return args[2:]


def bars_by_hand(since: datetime, until: datetime) -> list[dict[str, Any]]:
    """One-minute OHLCV of the sample's BHP trades (company 7078), from the CSV, Sydney time made UTC."""
    bars: dict[datetime, dict[str, Any]] = {}
    for line in (SAMPLE / "trades" / "7078.csv").read_text().splitlines():
        day, time_, price, volume = line.split(",")[:4]
        local = datetime.strptime(f"{day} {time_}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY)
        at = local.astimezone(UTC)
        if not since <= at < until:
            continue
        minute = at.replace(second=0, microsecond=0)
        p, v = Decimal(price), int(volume)
        bar = bars.setdefault(minute, {"open": p, "high": p, "low": p, "close": p, "volume": 0, "trades": 0})
        bar["high"], bar["low"], bar["close"] = max(bar["high"], p), min(bar["low"], p), p  # file order is time order
        bar["volume"] += v
        bar["trades"] += 1
    return [{"minute": m, **b} for m, b in sorted(bars.items())]


def test_readme_ohlcv_example_matches_bars_computed_from_the_csv(sqlite_env: K2Env, tmp_path: Path) -> None:
    env = sqlite_env
    env.start_worker()
    env.k2("replay", str(SAMPLE), "--no-progress")
    env.wait_landed()
    args = readme_example()
    out = tmp_path / "bars.parquet"
    shown = env.k2("query", *args)
    env.k2("query", *args, "--format", "parquet", "--out", str(out))
    since = datetime.fromisoformat(args[args.index("--since") + 1]).replace(tzinfo=UTC)
    until = datetime.fromisoformat(args[args.index("--until") + 1]).replace(tzinfo=UTC)
    expected = bars_by_hand(since, until)
    got = pq.read_table(out).to_pylist()
    assert len(expected) > 30
    assert [{**g, "minute": g["minute"].astimezone(UTC)} for g in got] == expected
    assert f"({len(expected)} row(s))" in shown.stdout
