"""``k2 audit``: exit codes, the terminal table, the ranges, JSON, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.catalog import default_catalog_properties
from k2.cli.main import main
from k2.lake.schemas import TRADES
from k2.lake.tables import ensure_tables
from k2.settings import get_settings

from .audit_helpers import FakeGroup, FakeLog, land
from .lake_helpers import QUOTES_TOPIC, REFERENCE_TOPIC, TRADES_TOPIC

ROOT = Path(__file__).resolve().parents[2]
T0, Q0, R0 = (TRADES_TOPIC, 0), (QUOTES_TOPIC, 0), (REFERENCE_TOPIC, 0)


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A K2 environment of its own: embedded catalog under ``tmp_path``, default topic names."""
    for key in list(os.environ):
        if key.startswith(("K2_", "PYICEBERG_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("K2_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path))  # no ~/.pyiceberg.yaml
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def lake_with_trades(var_dir: Path, offsets: list[int], mark: int) -> None:
    catalog = SqlCatalog("k2", **default_catalog_properties(var_dir))
    ensure_tables(catalog)
    land(catalog, TRADES, {T0: mark}, kafka_partition=[0] * len(offsets), kafka_offset=offsets)


def fake_kafka(monkeypatch: pytest.MonkeyPatch, log: FakeLog, group: FakeGroup | None = None) -> None:
    monkeypatch.setattr("k2.audit.kafka.KafkaLog", lambda settings, timeout_s: log)
    monkeypatch.setattr("k2.admin.group.GroupAdmin", lambda settings, timeout_s: group or FakeGroup())


def test_the_law_holds_exit_0(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake_with_trades(var_dir, list(range(0, 30)), 29)
    fake_kafka(monkeypatch, FakeLog({T0: 35, Q0: 0, R0: 0}))
    assert main(["audit"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("topic"))
    table = lines[header : header + 4]
    assert table[0].split() == [
        "topic",
        "partition",
        "log",
        "start",
        "mark",
        "log",
        "end",
        "rows",
        "rejects",
        "missing",
        "doubled",
    ]
    assert len({len(line) for line in table}) == 1, "columns are aligned"
    assert table[1].split() == [QUOTES_TOPIC, "0", "0", "-", "0", "0", "0", "0", "0"]
    assert table[3].split() == [TRADES_TOPIC, "0", "0", "29", "35", "30", "0", "0", "0"]
    assert lines[-1] == (
        "law holds: 3 topic(s), 3 partition(s), 30 offset(s) checked from log start to mark, 0 missing, 0 doubled; "
        "5 above the marks not judged (lake lag)"
    )


def test_the_law_broken_exit_1_with_ranges(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake_with_trades(var_dir, [*range(0, 23304), *range(23317, 23400), 23401, 23401], 23401)
    fake_kafka(monkeypatch, FakeLog({T0: 23402, Q0: 0, R0: 0}))
    assert main(["audit"]) == 1
    out = capsys.readouterr().out
    assert f"missing            {TRADES_TOPIC}/0: 23304-23316, 23400\n" in out
    assert f"doubled            {TRADES_TOPIC}/0: 23401 (in market_data.trades 2 row(s))\n" in out
    assert out.splitlines()[-1].startswith("LAW BROKEN: 14 missing, 1 doubled;")


def test_json(var_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    lake_with_trades(var_dir, [0, 1, 2, 5], 5)
    fake_kafka(monkeypatch, FakeLog({T0: 6, Q0: 0, R0: 0}, empty={T0: [4]}))
    assert main(["audit", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    trades = next(p for p in doc["partitions"] if p["topic"] == TRADES_TOPIC)
    assert trades["missing"] == {"count": 1, "ranges": [[3, 3]], "ranges_total": 1, "verified": True, "no_record": 1}
    assert trades["rows"] == {"market_data.trades": 4, "market_data.rejects": 0}
    assert doc["catalog"].startswith("k2 (SqlCatalog)")


def run_k2(var_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "PYICEBERG_"))}
    clean.update({"K2_VAR_DIR": str(var_dir), "PYICEBERG_HOME": str(var_dir), **env})
    return subprocess.run(
        [sys.executable, "-m", "k2.cli.main", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def test_no_tables_is_exit_2_in_one_line(var_dir: Path) -> None:
    proc = run_k2(var_dir, "audit")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "holds none of K2's tables: run `k2 init`" in proc.stderr


def test_unreachable_kafka_is_exit_2_in_one_line(var_dir: Path) -> None:
    lake_with_trades(var_dir, [0], 0)
    proc = run_k2(var_dir, "audit", "--timeout", "1", K2_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("k2 audit: cannot read the log bounds: cannot reach Kafka at 127.0.0.1:1")
    assert "make stack-up" in proc.stderr


def test_bad_settings_are_exit_2_in_one_line(var_dir: Path) -> None:
    proc = run_k2(var_dir, "audit", K2_TRADES_PARTITIONS="none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("k2 audit: invalid settings: K2_TRADES_PARTITIONS='none'")


def test_settle_must_be_seconds(var_dir: Path) -> None:
    proc = run_k2(var_dir, "audit", "--settle", "-1")
    assert proc.returncode == 2 and "must be 0 or more seconds" in proc.stderr


def test_unreachable_catalog_is_exit_2_in_one_line(var_dir: Path) -> None:
    proc = run_k2(var_dir, "audit", PYICEBERG_CATALOG__K2__TYPE="rest", PYICEBERG_CATALOG__K2__URI="http://127.0.0.1:1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("k2 audit: Iceberg catalog 'k2' is configured") and proc.stderr.count("\n") == 1


def test_to_end_judges_what_never_landed_exit_1(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake_with_trades(var_dir, list(range(0, 30)), 29)
    fake_kafka(monkeypatch, FakeLog({T0: 35, Q0: 0, R0: 0}))
    assert main(["audit", "--to-end"]) == 1
    out = capsys.readouterr().out
    assert f"missing            {TRADES_TOPIC}/0: 30-34\n" in out
    assert f"note  unowned: {TRADES_TOPIC}/0 (5 offsets waiting ?): records beyond the lake's mark" in out
    assert out.splitlines()[-1].startswith(
        "LAW BROKEN: 5 missing, 0 doubled; 3 topic(s), 3 partition(s), 35 offset(s) checked from log start to end"
    )


@pytest.mark.parametrize("command", ["status", "tables"])
def test_the_groups_view_of_an_unreachable_kafka_is_exit_2_in_one_line(var_dir: Path, command: str) -> None:
    lake_with_trades(var_dir, [0], 0)
    proc = run_k2(
        var_dir, command, *(("--timeout", "1") if command == "status" else ()), K2_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"k2 {command}: cannot reach Kafka at 127.0.0.1:1")
