"""Every K2 metric moves as it should on known inputs; each test has its own ``CollectorRegistry()``.

The ingress counters are driven through the real :class:`IngressProcessor` (confluent's
in-memory registry, Avro-encoded records), the sink ones through the real flusher and
runtime on a SQLite catalog, and the whole exposition, faust's metrics included, is
checked by ``promtool check metrics`` as Prometheus itself would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from pyiceberg.table import Table

from k2.avro.codec import encode, parse_schema
from k2.avro.registry import WriterSchema, WriterSchemaCache
from k2.avro.schemas import CONTRACTS
from k2.buffer.store import ChunkStore
from k2.ingest.frames import RawRecord
from k2.ingest.processor import IngressProcessor, LakeSchemas
from k2.lake.arrow import arrow_schema, events_to_arrow
from k2.lake.laps import STEPS
from k2.lake.records import RejectRecord
from k2.lake.schemas import QUOTES, TRADES
from k2.lake.schemas import REJECTS as REJECTS_TABLE
from k2.lake.state import LakeState
from k2.lake.writer import IcebergWriter
from k2.metrics import K2Metrics
from k2.models import Reject
from k2.observe.lag import partition_lags
from k2.web.prometheus import faust_metrics
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.ingest_helpers import process, sent_reject, source
from tests.unit.lake_helpers import QUOTES_TOPIC, T0, TOPICS, TRADES_TOPIC, quote, sqlite_catalog, trade, trade_events
from tests.unit.test_lake_writer import offsets_of
from tests.unit.test_registry import FakeAsyncRegistry
from tests.unit.test_sink import Harness

NOW_S = T0 / 1000 + 60


def value(metrics: K2Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- ingress: consumed, accepted, rejected by reason, crossed quotes, schema versions ---------------


class FlakyRegistry(FakeAsyncRegistry):
    """Fails with ``fail_with`` for the next ``failures_left`` calls, then answers."""

    failures_left = 0

    def _maybe_fail(self, name: str) -> None:
        if self.failures_left == 0:
            self.fail_with = None
        else:
            self.failures_left -= 1
        super()._maybe_fail(name)


class Ingress:
    def __init__(self, topic: str, kind: str) -> None:
        self.client = FlakyRegistry()
        self.metrics = K2Metrics(CollectorRegistry())
        self.subject = f"{topic}-value"
        self.rejected: list[RejectRecord] = []
        lake = LakeSchemas(LakeState, arrow_schema, self._no_evolution)
        self.processor = IngressProcessor(
            source(topic, kind),
            ChunkStore(RecordingTable(), topic),
            WriterSchemaCache(self.client),
            lake,
            self._send_reject,
            self.metrics,
            "test:1",
            clock=lambda: NOW_S,
        )

    @staticmethod
    def _no_evolution(table: str, writer: WriterSchema) -> bool:
        return False

    async def _send_reject(self, record: RejectRecord, reject: Reject) -> asyncio.Future[None]:
        self.rejected.append(record)
        return await sent_reject([], record, reject)

    async def register(self, contract: str, schema_str: str | None = None) -> int:
        return await self.client.register_schema(self.subject, Schema(schema_str or CONTRACTS[contract].schema_str))


def record(offset: int, body: bytes | None) -> RawRecord:
    return RawRecord(0, offset, b"BHP", body, T0)


async def test_ingress_counts_consumed_accepted_and_rejects_by_reason() -> None:
    ing = Ingress(TRADES_TOPIC, "trades")
    schema_id = await ing.register("trade")
    parsed = CONTRACTS["trade"].parsed
    batch = [
        record(0, encode(schema_id, parsed, trade())),
        record(1, encode(schema_id, parsed, trade())),
        record(2, encode(schema_id, parsed, trade(price=Decimal("0")))),
        record(3, b"junk"),
        record(4, None),
    ]
    assert await process(ing.processor, batch) == 2
    m = ing.metrics
    assert value(m, "k2_events_consumed_total", topic=TRADES_TOPIC) == 5
    assert value(m, "k2_events_accepted_total", topic=TRADES_TOPIC) == 2
    assert value(m, "k2_events_rejected_total", topic=TRADES_TOPIC, reason="invalid_value") == 1
    assert value(m, "k2_events_rejected_total", topic=TRADES_TOPIC, reason="not_confluent_framed") == 2
    assert value(m, "k2_crossed_quotes_total", topic=TRADES_TOPIC) is None
    assert len(ing.rejected) == 3

    await process(ing.processor, [record(5, encode(schema_id, parsed, trade()))])
    assert value(m, "k2_events_consumed_total", topic=TRADES_TOPIC) == 6
    assert value(m, "k2_events_accepted_total", topic=TRADES_TOPIC) == 3


async def test_crossed_quotes_are_counted_and_accepted() -> None:
    ing = Ingress(QUOTES_TOPIC, "quotes")
    schema_id = await ing.register("quote")
    parsed = CONTRACTS["quote"].parsed
    crossed = quote(bid_price=Decimal("37.8"), ask_price=Decimal("37.7"))
    await process(
        ing.processor, [record(0, encode(schema_id, parsed, crossed)), record(1, encode(schema_id, parsed, quote()))]
    )
    assert value(ing.metrics, "k2_crossed_quotes_total", topic=QUOTES_TOPIC) == 1
    assert value(ing.metrics, "k2_events_accepted_total", topic=QUOTES_TOPIC) == 2


async def test_schema_versions_seen_counts_distinct_writer_schemas_per_subject() -> None:
    ing = Ingress(TRADES_TOPIC, "trades")
    v1 = await ing.register("trade")
    tree = json.loads(CONTRACTS["trade"].schema_str)
    tree["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    v2 = await ing.register("trade", json.dumps(tree))
    parsed = CONTRACTS["trade"].parsed
    await process(ing.processor, [record(0, encode(v1, parsed, trade()))])
    assert value(ing.metrics, "k2_schema_versions_seen", subject=ing.subject) == 1
    await process(ing.processor, [record(1, encode(v1, parsed, trade()))])
    assert value(ing.metrics, "k2_schema_versions_seen", subject=ing.subject) == 1
    await process(ing.processor, [record(2, encode(v2, parse_schema(tree), {**trade(), "note": "x"}))])
    assert value(ing.metrics, "k2_schema_versions_seen", subject=ing.subject) == 2


async def test_registry_retries_are_counted() -> None:
    ing = Ingress(TRADES_TOPIC, "trades")
    ing.processor.max_retry_delay_s = 0.01
    schema_id = await ing.register("trade")
    ing.client.fail_with = SchemaRegistryError(503, 50301, "unavailable")
    ing.client.failures_left = 2
    await process(ing.processor, [record(0, encode(schema_id, CONTRACTS["trade"].parsed, trade()))])
    assert value(ing.metrics, "k2_schema_registry_retries_total") == 2
    assert value(ing.metrics, "k2_events_accepted_total", topic=TRADES_TOPIC) == 1


# -- sink: flushes, rows written and skipped, commit duration, failures, last commit, buffer --------


async def test_flush_moves_sink_metrics_per_table(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.flusher.clock = lambda: 1000.0
    await h.put_trades(0, range(0, 10))
    await h.put_trades(1, range(0, 5))
    assert h.flusher.publish_buffered_rows()[TRADES] == 15
    assert h.metric("k2_buffered_rows", table=TRADES) == 15

    await h.flusher.flush({(TRADES_TOPIC, 0): 10**9, (TRADES_TOPIC, 1): 10**9})
    assert h.metric("k2_flushes_total", table=TRADES) == 1
    assert h.metric("k2_rows_written_total", table=TRADES) == 15
    assert h.metric("k2_rows_skipped_already_committed_total", table=TRADES) == 0
    assert h.metric("k2_iceberg_commit_duration_seconds_count", table=TRADES) == 1
    assert h.metric("k2_iceberg_commit_duration_seconds_sum", table=TRADES) > 0
    for step in STEPS:
        assert h.metric("k2_iceberg_commit_step_seconds_count", table=TRADES, step=step) == 1
    assert h.metric("k2_iceberg_table_snapshots", table=TRADES) == 1
    assert h.metric("k2_iceberg_last_commit_timestamp_seconds", table=TRADES) == 1000.0
    assert h.metric("k2_buffered_rows", table=TRADES) == 0

    # A replay of rows already landed: counted as skipped, no new snapshot, no new commit time.
    h.flusher.clock = lambda: 2000.0
    await h.put_trades(0, range(5, 12))
    await h.flusher.flush({(TRADES_TOPIC, 0): 10**9})
    assert h.metric("k2_flushes_total", table=TRADES) == 2
    assert h.metric("k2_rows_written_total", table=TRADES) == 17
    assert h.metric("k2_rows_skipped_already_committed_total", table=TRADES) == 5
    assert h.metric("k2_iceberg_commit_duration_seconds_count", table=TRADES) == 2
    assert h.metric("k2_iceberg_commit_step_seconds_count", table=TRADES, step="catalog") == 2
    assert h.metric("k2_iceberg_table_snapshots", table=TRADES) == 2
    assert h.metric("k2_iceberg_last_commit_timestamp_seconds", table=TRADES) == 2000.0
    assert h.metric("k2_iceberg_commit_failures_total", table=TRADES) == 0


async def test_commit_attempts_count_the_retries_after_a_conflict(tmp_path: Path) -> None:
    # Another worker commits to the table between this flush's read of it and its append: one retry.
    h = Harness(tmp_path)
    other = IcebergWriter(sqlite_catalog(tmp_path), TOPICS, "other:2", sleep=lambda _: None)
    real = h.writer.table
    fired = []

    def table(name: str, *, refresh: bool = False) -> Table:
        loaded = real(name, refresh=refresh)
        if refresh and name == TRADES and not fired:
            fired.append(name)
            theirs = trade_events(2, range(3))
            other.commit(TRADES, events_to_arrow(TRADES, theirs), offsets_of(theirs), "other-1")
        return loaded

    h.writer.table = table  # type: ignore[method-assign]
    await h.put_trades(0, range(0, 10))
    await h.flusher.flush({(TRADES_TOPIC, 0): 10**9})
    assert fired == [TRADES]
    assert h.metric("k2_flushes_total", table=TRADES) == 1
    assert h.metric("k2_iceberg_commit_attempts_total", table=TRADES) == 2
    assert h.metric("k2_rows_written_total", table=TRADES) == 10


async def test_commit_failure_is_counted_and_rows_stay_buffered(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.put_trades(0, range(0, 4))
    h.writer.catalog.drop_table(TRADES)  # a real failure: the table is gone from the catalog
    h.writer.state.forget(TRADES)
    report = await h.flusher.flush({(TRADES_TOPIC, 0): 10**9})
    assert TRADES in report.failed
    assert h.metric("k2_iceberg_commit_failures_total", table=TRADES) == 1
    assert h.metric("k2_flushes_total", table=TRADES) == 0
    assert h.metric("k2_buffered_rows", table=TRADES) == 4


# -- commit age, lag gauges, label initialisation ---------------------------------------------------


def test_commit_age_is_computed_at_scrape_time() -> None:
    now = [1000.0]
    m = K2Metrics(CollectorRegistry(), clock=lambda: now[0])
    assert value(m, "k2_iceberg_last_commit_age_seconds", table=TRADES) is None
    m.record_commit(TRADES, 990.0)
    assert value(m, "k2_iceberg_last_commit_age_seconds", table=TRADES) == 10.0
    now[0] = 1300.0
    assert value(m, "k2_iceberg_last_commit_age_seconds", table=TRADES) == 310.0
    m.record_commit(TRADES, 1290.0)
    assert value(m, "k2_iceberg_last_commit_age_seconds", table=TRADES) == 10.0


def test_last_commit_never_moves_back() -> None:
    m = K2Metrics(CollectorRegistry())
    m.record_commit(TRADES, 500.0)
    m.record_commit(TRADES, 400.0)  # e.g. an older snapshot read from the lake afterwards
    assert value(m, "k2_iceberg_last_commit_timestamp_seconds", table=TRADES) == 500.0


def test_lag_gauges_follow_owned_partitions() -> None:
    m = K2Metrics(CollectorRegistry())
    ends = {(TRADES_TOPIC, 0): 100, (TRADES_TOPIC, 1): 50}
    m.publish_lag(partition_lags(ends, {(TRADES_TOPIC, 0): 90}, {(TRADES_TOPIC, 0): 79, (TRADES_TOPIC, 1): 49}))
    assert value(m, "k2_consumer_lag", topic=TRADES_TOPIC, partition="0") == 10
    assert value(m, "k2_consumer_lag", topic=TRADES_TOPIC, partition="1") == 50  # nothing committed yet
    assert value(m, "k2_lake_lag", topic=TRADES_TOPIC, partition="0") == 20
    assert value(m, "k2_lake_lag", topic=TRADES_TOPIC, partition="1") == 0
    # Partition 1 moved to another worker: its series disappear here rather than freeze.
    m.publish_lag(partition_lags({(TRADES_TOPIC, 0): 100}, {(TRADES_TOPIC, 0): 100}, {(TRADES_TOPIC, 0): 99}))
    assert value(m, "k2_consumer_lag", topic=TRADES_TOPIC, partition="0") == 0
    assert value(m, "k2_lake_lag", topic=TRADES_TOPIC, partition="0") == 0
    assert value(m, "k2_consumer_lag", topic=TRADES_TOPIC, partition="1") is None
    assert value(m, "k2_lake_lag", topic=TRADES_TOPIC, partition="1") is None


def test_known_topics_and_tables_export_zero_from_the_start() -> None:
    m = K2Metrics(CollectorRegistry())
    assert value(m, "k2_iceberg_commit_failures_total", table=TRADES) is None
    m.init_labels([TRADES_TOPIC], [TRADES, REJECTS_TABLE])
    for name in ("k2_iceberg_commit_failures_total", "k2_flushes_total", "k2_rows_written_total", "k2_buffered_rows"):
        assert value(m, name, table=REJECTS_TABLE) == 0
    assert value(m, "k2_events_consumed_total", topic=TRADES_TOPIC) == 0


# -- commit times: from the lake at start, then from each flush ------------------------------------


def test_commit_times_are_seeded_from_the_lake_and_only_move_forward() -> None:
    from k2.lake.status import TableStatus
    from k2.pipeline.sink import record_commit_times

    metrics = K2Metrics(CollectorRegistry())
    statuses = [TableStatus(TRADES, True, 1, 1_700_000_000_000), TableStatus(QUOTES, True)]
    record_commit_times(metrics, statuses)
    assert value(metrics, "k2_iceberg_last_commit_timestamp_seconds", table=TRADES) == 1_700_000_000
    assert value(metrics, "k2_iceberg_last_commit_timestamp_seconds", table=QUOTES) is None
    record_commit_times(metrics, [TableStatus(TRADES, True, 0, 1_600_000_000_000)])  # an older read
    assert value(metrics, "k2_iceberg_last_commit_timestamp_seconds", table=TRADES) == 1_700_000_000


# -- faust's sensor, renamed to base units, and the whole exposition through promtool --------------


def test_faust_histograms_are_exported_in_seconds() -> None:
    registry = CollectorRegistry()
    fm = faust_metrics(registry)
    fm.events_runtime_latency.observe(250.0)  # faust observes milliseconds
    assert registry.get_sample_value("k2_faust_events_runtime_seconds_sum") == 0.25
    assert registry.get_sample_value("k2_faust_events_runtime_seconds_bucket", {"le": "0.25"}) == 1
    assert registry.get_sample_value("k2_faust_events_runtime_ms_sum") is None
    names = {m.name for m in registry.collect()}
    assert not any(n.endswith("_ms") for n in names)
    assert all(not isinstance(v, Histogram) for v in fm._asdict().values()), (
        "every faust histogram is wrapped to take milliseconds"
    )


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make system-deps` installs Debian's prometheus package"
    return found


def test_exposition_of_faust_and_k2_metrics_passes_promtool() -> None:
    registry = CollectorRegistry()
    fm = faust_metrics(registry)
    m = K2Metrics(registry)
    m.init_labels([TRADES_TOPIC], [TRADES])
    fm.topic_partition_end_offset.labels(TRADES_TOPIC, 0).set(10)
    fm.messages_received_per_topics.labels(TRADES_TOPIC).inc()
    fm.http_latency.observe(3.0)
    m.events_rejected.labels(TRADES_TOPIC, "invalid_value").inc()
    m.crossed_quotes.labels(QUOTES_TOPIC).inc()
    m.schema_versions_seen.labels("s-value").set(1)
    m.commit_duration.labels(TRADES).observe(0.2)
    m.record_commit(TRADES, 1.0)
    m.publish_lag(partition_lags({(TRADES_TOPIC, 0): 3}, {}, {}))
    text = generate_latest(registry)
    proc = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert b"k2_iceberg_last_commit_age_seconds" in text and b"k2_lake_lag" in text


@pytest.mark.parametrize("name", ["k2_consumer_lag", "k2_lake_lag", "k2_iceberg_last_commit_age_seconds"])
def test_every_k2_metric_has_help(name: str) -> None:
    m = K2Metrics(CollectorRegistry())
    families = {f.name: f for f in m.registry.collect()}
    assert families[name].documentation
