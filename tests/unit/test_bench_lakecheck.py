"""bench/lakecheck.py: the benchmark's missing/doubled count and freshness, on a SQLite lake in tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import IntegerType, LongType, NestedField

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.lakecheck import Lineage, SnapshotTimes, exactness, file_stats, freshness  # noqa: E402

SCHEMA = Schema(
    NestedField(1, "kafka_partition", IntegerType(), required=False),
    NestedField(2, "kafka_offset", LongType(), required=False),
)


def _lake(tmp_path: Path, batches: list[list[tuple[int, int]]]) -> SqlCatalog:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path / 'c.db'}", warehouse=(tmp_path / "w").as_uri())
    catalog.create_namespace("ns")
    table = catalog.create_table("ns.rows", SCHEMA)
    for batch in batches:
        table.append(
            pa.table(
                {
                    "kafka_partition": pa.array([p for p, _ in batch], pa.int32()),
                    "kafka_offset": pa.array([o for _, o in batch], pa.int64()),
                }
            )
        )
    return catalog


def test_exactness_counts_missing_doubled_and_strays(tmp_path: Path) -> None:
    # Partition 0 holds offsets 0..4 (5 records), partition 1 offsets 0..2 (3 records).
    rows = [[(0, 0), (0, 1), (0, 2), (1, 0)], [(0, 2), (0, 4), (1, 1), (1, 7), (2, 0)]]
    catalog = _lake(tmp_path, rows)
    verdict = exactness(catalog, [Lineage("ns.rows", "topic")], {("topic", 0): 5, ("topic", 1): 3})
    # missing: 0/3 and 1/2; doubled: 0/2 once; outside Kafka: 1/7 (above the end) and partition 2.
    assert verdict == {"rows": 9, "missing": 2, "doubled": 1, "outside_kafka": 2}
    assert file_stats(catalog, ["ns.rows"])["data_files"] == 2


def test_exactness_of_a_complete_lake_is_zero(tmp_path: Path) -> None:
    catalog = _lake(tmp_path, [[(0, 0), (0, 1)], [(0, 2)]])
    assert exactness(catalog, [Lineage("ns.rows", "topic")], {("topic", 0): 3})["missing"] == 0


def test_freshness_is_commit_time_minus_create_time(tmp_path: Path) -> None:
    catalog = _lake(tmp_path, [[(0, 0), (0, 1)], [(0, 2)]])
    table = catalog.load_table("ns.rows")
    first, second = sorted(s.timestamp_ms for s in table.snapshots())
    produced = pa.table(
        {
            "topic": ["topic"] * 3,
            "p": pa.array([0, 0, 0], pa.int64()),
            "o": pa.array([0, 1, 2], pa.int64()),
            "produced_ms": pa.array([first - 1000, first - 3000, second - 2000], pa.int64()),
        }
    )
    fresh = freshness(catalog, [Lineage("ns.rows", "topic")], produced, since_ms=0)
    assert fresh["n"] == 3 and fresh["max_s"] == 3.0
    assert fresh["p50_s"] == 2.0
    # By span of produce time: the first half made only the row 3 s late; the second, those 2 s and 1 s late.
    halves = freshness(catalog, [Lineage("ns.rows", "topic")], produced, since_ms=0, slices=2)["p99_by_slice_s"]
    assert halves == [3.0, 1.99]
    # Rows produced before since_ms are not counted (the warm-up).
    assert freshness(catalog, [Lineage("ns.rows", "topic")], produced, since_ms=first - 2500)["n"] == 2


def test_soak_trend_reads_growth_from_the_second_half_only() -> None:
    from bench.soak import trend

    flat = [(t * 10.0, 300.0 + (50.0 if t < 3 else 0.0)) for t in range(12)]  # warm-up bump, then flat
    assert trend(flat) == {
        "first_half_peak_mib": 350.0,
        "second_half_peak_mib": 300.0,
        "second_half_growth_mib_per_min": 0.0,
    }
    growing = [(t * 10.0, 300.0 + t) for t in range(12)]  # 1 MiB per 10 s
    assert trend(growing)["second_half_growth_mib_per_min"] == 6.0
    with pytest.raises(ValueError):
        trend(growing[:3])


def test_soak_variants_name_a_worker_and_what_its_environment_adds() -> None:
    from bench.soak import parse_variant

    assert parse_variant("k2") == ("k2", {})
    assert parse_variant("arenas-2:MALLOC_ARENA_MAX=2,ARROW_DEFAULT_MEMORY_POOL=system") == (
        "arenas-2",
        {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"},
    )
    assert parse_variant("empty:K2_X=") == ("empty", {"K2_X": ""})
    for bad in ("", ":A=1", "a b", "x:NOVALUE", "x:=1"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_the_baseline_system_runs_the_k2_of_another_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compare.py --baseline: k2-base is K2 from that checkout (its k2 package first on the path), k2 this one's."""
    from bench.runners import BASELINE_VAR, Source, make

    source = Source("127.0.0.1:1", "http://127.0.0.1:2", "t", "q", "r", "x")
    monkeypatch.setenv(BASELINE_VAR, str(tmp_path / "base"))
    base = make("k2-base", source, {}, tmp_path / "b", 5.0)
    mine = make("k2", source, {}, tmp_path / "k", 5.0)
    assert base.env(1)["PYTHONPATH"] == str(tmp_path / "base")  # type: ignore[attr-defined]
    assert mine.env(1)["PYTHONPATH"] == str(ROOT)  # type: ignore[attr-defined]
    assert base.env(1)["K2_TRADES_TOPIC"] == mine.env(1)["K2_TRADES_TOPIC"] == "t"  # type: ignore[attr-defined]


def test_k2_base_runs_only_when_asked_for_with_a_baseline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench.compare import arguments

    monkeypatch.setattr(sys, "argv", ["compare.py"])
    assert "k2-base" not in arguments().names  # make bench, as before
    monkeypatch.setattr(sys, "argv", ["compare.py", "--systems", "floor,k2-base,k2"])
    with pytest.raises(SystemExit) as usage:
        arguments()
    assert usage.value.code == 2
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / "app.py").write_text("")
    monkeypatch.setattr(sys, "argv", ["compare.py", "--systems", "floor,k2-base,k2", "--baseline", str(tmp_path)])
    monkeypatch.delenv("BENCH_K2_BASELINE", raising=False)
    assert arguments().names == ["floor", "k2-base", "k2"]
    assert os.environ["BENCH_K2_BASELINE"] == str(tmp_path.resolve())


def test_freshness_counts_the_rows_of_expired_snapshots_whose_times_were_read_during_the_run(tmp_path: Path) -> None:
    catalog = _lake(tmp_path, [[(0, 0), (0, 1)], [(0, 2)]])
    lineage = Lineage("ns.rows", "topic")
    with SnapshotTimes(catalog, ["ns.rows"], interval_s=3600) as times:
        pass  # read once on the way out
    table = catalog.load_table("ns.rows")
    first, second = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    produced = pa.table(
        {
            "topic": ["topic"] * 3,
            "p": pa.array([0, 0, 0], pa.int64()),
            "o": pa.array([0, 1, 2], pa.int64()),
            "produced_ms": pa.array([first.timestamp_ms - 1000] * 2 + [second.timestamp_ms - 1000], pa.int64()),
        }
    )
    table.maintenance.expire_snapshots().by_id(first.snapshot_id).commit()
    assert freshness(catalog, [lineage], produced, since_ms=0)["n"] == 1  # the first snapshot's rows drop out
    kept = freshness(catalog, [lineage], produced, since_ms=0, known=times.commit_ms)
    assert kept["n"] == 3 and kept["max_s"] == 1.0
    assert set(times.summaries["ns.rows"]) == {first.snapshot_id, second.snapshot_id}
