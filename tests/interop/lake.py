"""A K2 lake laid down by K2 itself, and read by Spark beside pyiceberg.

The lake is what users get: ``k2 init``, a ``faust -A k2.app worker`` process, ``k2 replay``
of the bundled sample over several passes (several days, several files a day), injected
gaps and duplicates (rows in ``sequence_gaps`` and ``rejects``), ``k2 rejects replay``
(rows in ``redrives``); later ``k2 maintain`` and more rows. The tables merge their manifests
from two (K2's merge from 100 by default), so the readers meet merged manifests. The worker runs only while
something lands, so nothing commits while the two readers are compared.

Compaction is watched by followers: Spark Structured Streaming queries and incremental
append reads that started before it, as a consumer of a streaming lake would read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.table import Table

from k2.catalog import default_catalog_properties
from k2.lake.maintain import MAINTENANCE_KEY
from k2.lake.schemas import QUOTES, TABLES, TRADES
from tests.integration.k2env import K2Env
from tests.integration.law import assert_law
from tests.interop.compare import POSITION, diff_files, diff_history, diff_rows, diff_snapshots
from tests.interop.spark import jdbc_catalog, rest_catalog, session_with_catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["FULL", "SHORT", "Follower", "Lake", "Plan", "Reading", "plan"]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
SPARK_CATALOG = "k2"
"""The catalog's name in Spark; for the embedded catalog it must be K2's (JdbcCatalog selects rows by it)."""

# The first replay lands these symbols, the one after `k2 maintain` the other: its rows go into
# the days compaction rewrote (the sample's three symbols trade on the same days), and its
# sequence numbers are its own, so none of them is taken for a duplicate.
FIRST_SYMBOLS = "BHP,MWR"
LATER_SYMBOLS = "DVN"
MIN_TO_MERGE = "commit.manifest.min-count-to-merge"


@dataclass(frozen=True)
class Plan:
    """How big a lake the interop tests lay down, and how closely they look at it."""

    catalogs: tuple[str, ...]
    passes: int
    """Passes of the sample per replay (``--loop``): each pass is a new set of days."""
    rate: int
    """Events per second of each replay: slow enough that a day lands in several commits, so several files."""
    followed: tuple[str, ...]
    """Tables a stream and an incremental read follow across the compaction."""
    time_travel: int
    """Snapshots of each table read back by both readers (besides the current one)."""


SHORT = Plan(catalogs=("sqlite",), passes=2, rate=1500, followed=(TRADES,), time_travel=3)
FULL = Plan(catalogs=("sqlite", "rest"), passes=6, rate=3000, followed=(TRADES, QUOTES), time_travel=8)


def plan() -> Plan:
    """:data:`FULL` under ``K2_INTEROP_FULL=1`` (``make test-interop``), else :data:`SHORT` (``make test``)."""
    return FULL if os.environ.get("K2_INTEROP_FULL", "").strip() not in ("", "0") else SHORT


class Follower:
    """Spark Structured Streaming over one table; each :meth:`catch_up` processes what is there (AvailableNow).

    The checkpoint is kept between runs, as a scheduled job's would be; every micro-batch's
    positions are kept, so a row delivered twice or never shows.
    """

    def __init__(self, session: SparkSession, ident: str, checkpoint: Path) -> None:
        self.session = session
        self.ident = ident
        self.checkpoint = checkpoint
        self.batches: list[pa.Table] = []

    def _collect(self, frame: DataFrame, batch_id: int) -> None:
        self.batches.append(frame.select(*POSITION).toArrow())

    def catch_up(self, timeout_s: float = 600.0) -> None:
        """Run the query to the table's current snapshot; raises what the query raised (StreamingQueryException)."""
        query = (
            self.session.readStream.format("iceberg")
            .load(self.ident)
            .writeStream.foreachBatch(self._collect)
            .option("checkpointLocation", str(self.checkpoint))
            .trigger(availableNow=True)
            .start()
        )
        if not query.awaitTermination(timeout_s):
            query.stop()
            raise AssertionError(f"the stream over {self.ident} did not catch up within {timeout_s:.0f}s")

    def delivered(self) -> pa.Table:
        schema = pa.schema([("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])
        return pa.concat_tables([b.cast(schema) for b in self.batches]) if self.batches else schema.empty_table()


@dataclass
class Reading:
    """What one comparison of the two readers covered, and where they disagreed."""

    problems: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    values: int = 0
    snapshots_read: int = 0
    metadata_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent reading, per reader."""

    @contextmanager
    def timed(self, reader: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[reader] = self.seconds.get(reader, 0.0) + time.monotonic() - started

    def line(self) -> str:
        spent = ", ".join(f"{reader} {s:.1f}s" for reader, s in sorted(self.seconds.items()))
        return (
            f"{self.tables} tables, {self.rows:,} rows and {self.values:,} values read by both at their current "
            f"snapshots and {self.snapshots_read} earlier ones, {self.metadata_rows:,} metadata-table rows "
            f"({spent}); {len(self.problems)} disagreements"
        )


class Lake:
    """One K2 deployment on one catalog, with a Spark session over that catalog."""

    def __init__(self, env: K2Env, spark: SparkSession, plan: Plan, workdir: Path) -> None:
        self.env = env
        self.plan = plan
        self.session = session_with_catalog(spark, SPARK_CATALOG, self._spark_catalog())
        self.followers = {
            name: Follower(self.session, self.ident(name), workdir / "streams" / name) for name in plan.followed
        }
        self.before_compaction: dict[str, int] = {}
        """Per followed table, its current snapshot when ``k2 maintain`` started."""
        self.maintained: list[dict[str, Any]] | None = None

    def _spark_catalog(self) -> dict[str, str]:
        if self.env.catalog_kind == "rest":
            return rest_catalog(self.env.stack.pyiceberg_properties())
        props = default_catalog_properties(Path(self.env.env["K2_VAR_DIR"]))
        return jdbc_catalog(Path(props["uri"].removeprefix("sqlite:///")), props["warehouse"])

    @staticmethod
    def ident(name: str) -> str:
        """``name`` in Spark: ``k2.market_data.trades``."""
        return f"{SPARK_CATALOG}.{name}"

    def table(self, name: str) -> Table:
        return self.env.catalog().load_table(name)

    def spark_read(self, sql: str) -> pa.Table:
        return self.session.sql(sql).toArrow()

    # ------------------------------------------------------------------ laying it down

    def _land(self, *commands: Sequence[str]) -> None:
        """Start a worker, run the ``k2`` commands, wait until every source offset is in the lake, stop it."""
        self.env.start_worker()
        try:
            for args in commands:
                self.env.k2(*args)
                self.env.wait_landed(timeout_s=300)
        finally:
            self.env.close()
        assert_law(self.env)

    def _replay(self, symbols: str, *extra: str) -> list[str]:
        loops = ["--loop", str(self.plan.passes), "--rate", str(self.plan.rate)]
        return ["replay", str(SAMPLE), "--symbols", symbols, *loops, "--no-progress", *extra]

    def lay(self) -> None:
        """Tables created, the first symbols landed with gaps and duplicates, the duplicates sent again."""
        if self.env.catalog_kind == "rest":
            self.env.drop_tables()  # the stack's REST catalog is shared by every test of the session
        self.env.k2("init")
        for name in TABLES:  # K2's tables merge manifests from 100 (pyiceberg's default): here from 2
            with self.table(name).transaction() as txn:
                txn.set_properties({MIN_TO_MERGE: "2"})
        faults = ("--inject-gaps", "3", "--inject-duplicates", "3", "--seed", "7")
        self._land(self._replay(FIRST_SYMBOLS, *faults), ("rejects", "replay", "--reason", "duplicate", "--yes"))
        for name in TABLES:
            assert self.table(name).scan().count() > 0, f"{name} is empty: the lake must hold rows in every table"
        trades = self.table(TRADES)
        snapshot = trades.current_snapshot()
        assert snapshot is not None and len(trades.snapshots()) > 2
        assert len(snapshot.manifests(trades.io)) < len(trades.snapshots()), "the readers must meet merged manifests"

    def compact(self) -> list[dict[str, Any]]:
        """``k2 maintain``, once, between a first and a second run of every follower; then more rows land."""
        if self.maintained is None:
            for name, follower in self.followers.items():
                snapshot = self.table(name).current_snapshot()
                assert snapshot is not None
                self.before_compaction[name] = snapshot.snapshot_id
                follower.catch_up()
            self.maintained = json.loads(self.env.k2("maintain", "--json", timeout=600).stdout)
            compacted = {t["table"]: t["compacted"] for t in self.maintained}
            assert all(compacted[name] for name in self.plan.followed), f"k2 maintain compacted no day: {compacted}"
            self._land(self._replay(LATER_SYMBOLS))
        return self.maintained

    def maintenance_snapshots(self, name: str) -> list[int]:
        """The snapshots of ``name`` that ``k2 maintain`` committed (its summary key says so)."""
        return [s.snapshot_id for s in self.table(name).snapshots() if MAINTENANCE_KEY in (s.summary or {})]

    # ------------------------------------------------------------------ reading it twice

    def compare(self, travel_to: Mapping[str, Iterable[int]] | None = None) -> Reading:
        """Every table read by pyiceberg and by Spark: rows and values, metadata tables, time travel."""
        out = Reading()
        for name, definition in TABLES.items():
            table = self.table(name)
            ident = self.ident(name)
            key = [c for c in (definition.position.topic_column, *POSITION) if c]
            with out.timed("pyiceberg"):
                ours = table.scan().to_arrow()
            with out.timed("spark"):
                theirs = self.spark_read(f"SELECT * FROM {ident}")
            out.problems += diff_rows(name, ours, theirs, key)
            out.tables += 1
            out.rows += ours.num_rows
            out.values += ours.num_rows * ours.num_columns
            for kind, diff in (("snapshots", diff_snapshots), ("history", diff_history), ("files", diff_files)):
                with out.timed("pyiceberg"):
                    ours = getattr(table.inspect, kind)()
                with out.timed("spark"):
                    theirs = self.spark_read(f"SELECT * FROM {ident}.{kind}")
                out.problems += diff(name, ours, theirs)
                out.metadata_rows += ours.num_rows
            for snapshot_id in self._travel_targets(table, (travel_to or {}).get(name, ())):
                with out.timed("pyiceberg"):
                    ours = table.scan(snapshot_id=snapshot_id).to_arrow()
                with out.timed("spark"):
                    theirs = self.spark_read(f"SELECT * FROM {ident} VERSION AS OF {snapshot_id}")
                out.problems += diff_rows(f"{name}@{snapshot_id}", ours, theirs, key)
                out.snapshots_read += 1
                out.values += ours.num_rows * ours.num_columns
        return out

    def _travel_targets(self, table: Table, extra: Iterable[int]) -> list[int]:
        """Up to ``plan.time_travel`` snapshots spread over the table's history (not the current one), and ``extra``."""
        current = table.current_snapshot()
        history = [entry.snapshot_id for entry in table.history()]
        past = [s for s in history if current is None or s != current.snapshot_id]
        n = self.plan.time_travel
        spread = past if len(past) <= n else [past[round(i * (len(past) - 1) / (n - 1))] for i in range(n)]
        return list(dict.fromkeys([*spread, *extra]))

    def positions(self, name: str, snapshot_id: int | None = None) -> pa.Table:
        """The Kafka positions of ``name`` as pyiceberg reads them (at ``snapshot_id``, or now)."""
        return self.table(name).scan(snapshot_id=snapshot_id, selected_fields=POSITION).to_arrow()

    def spark_positions(self, name: str, snapshot_id: int) -> pa.Table:
        return self.spark_read(f"SELECT {', '.join(POSITION)} FROM {self.ident(name)} VERSION AS OF {snapshot_id}")

    def incremental(self, name: str, start: int, end: int) -> pa.Table:
        """Spark's incremental append read: rows of the appends after ``start`` up to ``end``."""
        frame = (
            self.session.read.format("iceberg")
            .option("start-snapshot-id", str(start))
            .option("end-snapshot-id", str(end))
            .load(self.ident(name))
        )
        return frame.select(*POSITION).toArrow()

    def snapshots_since(self, name: str, snapshot_id: int) -> list[int]:
        """The current snapshot's ancestors committed after ``snapshot_id``, oldest first."""
        history = [entry.snapshot_id for entry in self.table(name).history()]
        return history[history.index(snapshot_id) + 1 :]
