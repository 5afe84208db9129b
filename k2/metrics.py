"""K2's own Prometheus metrics, bundled in one object built from an injected registry.

Like faust's ``PrometheusMonitor``: production uses the process-wide default registry,
each test a fresh ``CollectorRegistry()`` so metric movements are asserted exactly.
Names follow Prometheus conventions: ``k2_`` prefix, base units, ``_total`` counters.

The age of the last commit is computed when scraped (:class:`CommitAgeCollector`), not
set by a periodic task: a task's value is stale by up to its period and freezes, still
looking healthy, if the task dies; a scrape-time value is exact and needs no task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from k2.observe.lag import PartitionLag

__all__ = ["CommitAgeCollector", "K2Metrics"]

_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, *_COMMIT_BUCKETS)
_AGE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0, 1800.0)


class K2Metrics:
    """Every metric K2 exports besides faust's own."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "k2_events_consumed_total", "Records read from a source topic.", ["topic"], registry=registry
        )
        self.events_accepted = Counter(
            "k2_events_accepted_total", "Records that passed schema and domain checks.", ["topic"], registry=registry
        )
        self.events_batch_path = Counter(
            "k2_events_batch_path_total",
            "Accepted records decoded and checked by the batch path (the rest went one by one: a share that falls "
            "means a producer writes what the batch path cannot prove, and the worker slows down).",
            ["topic"],
            registry=registry,
        )
        self.lake_regressions = Counter(
            "k2_lake_regressions_total",
            "Times a table was found recording less than it did (rolled back, restored): its partitions land again.",
            ["table"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "k2_events_rejected_total",
            "Records sent to the rejects topic, by reason.",
            ["topic", "reason"],
            registry=registry,
        )
        self.crossed_quotes = Counter(
            "k2_crossed_quotes_total",
            "Valid quotes whose bid is above the ask (pre-open auctions).",
            ["topic"],
            registry=registry,
        )
        self.schema_versions_seen = Gauge(
            "k2_schema_versions_seen", "Distinct writer schema ids seen per subject.", ["subject"], registry=registry
        )
        self.registry_retries = Counter(
            "k2_schema_registry_retries_total",
            "Registry lookups retried because the registry was unavailable.",
            registry=registry,
        )
        self.buffered_rows = Gauge(
            "k2_buffered_rows",
            "Rows buffered in Faust tables, not yet committed to Iceberg.",
            ["table"],
            registry=registry,
        )
        self.flushes = Counter(
            "k2_flushes_total",
            "Flushes that committed to a table (or found nothing new).",
            ["table"],
            registry=registry,
        )
        self.rows_written = Counter("k2_rows_written_total", "Rows committed to Iceberg.", ["table"], registry=registry)
        self.rows_skipped = Counter(
            "k2_rows_skipped_already_committed_total",
            "Buffered rows dropped because the table's offsets show them committed already.",
            ["table"],
            registry=registry,
        )
        self.commit_duration = Histogram(
            "k2_iceberg_commit_duration_seconds",
            "Time to commit one batch to an Iceberg table.",
            ["table"],
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.commit_event_age = Histogram(
            "k2_commit_oldest_event_age_seconds",
            "Per commit: seconds from the Kafka timestamp of the oldest event it made visible to the commit's end. "
            "What a reader of the table waits at worst; old by nature in a replay or a backlog.",
            ["table"],
            buckets=_AGE_BUCKETS,
            registry=registry,
        )
        self.commit_event_wait = Histogram(
            "k2_commit_oldest_event_wait_seconds",
            "Per commit: seconds from when this worker took the oldest event it made visible to the commit's end: "
            "the worker's share of k2_commit_oldest_event_age_seconds (the rest is Kafka's and the consumer's).",
            ["table"],
            buckets=_AGE_BUCKETS,
            registry=registry,
        )
        self.commit_steps = Histogram(
            "k2_iceberg_commit_step_seconds",
            "Time one commit spent in each step: refresh (reading the table), plan (marks and filter), "
            "write (data files), manifests (manifests and manifest list), catalog (the metadata swap).",
            ["table", "step"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.table_snapshots = Gauge(
            "k2_iceberg_table_snapshots",
            "Snapshots the table's metadata lists after this worker's last commit (each commit reads and writes "
            "them all).",
            ["table"],
            registry=registry,
        )
        self.commit_attempts = Counter(
            "k2_iceberg_commit_attempts_total",
            "Attempts of the commits k2_flushes_total counts, the first included: the difference is the commits "
            "retried because another worker committed to the table first (CommitFailedException) or the answer was "
            "lost.",
            ["table"],
            registry=registry,
        )
        self.commit_failures = Counter(
            "k2_iceberg_commit_failures_total",
            "Commits that failed after their retries.",
            ["table"],
            registry=registry,
        )
        self.last_commit = Gauge(
            "k2_iceberg_last_commit_timestamp_seconds",
            "Unix time of the last successful commit per table (alert on time() minus this).",
            ["table"],
            registry=registry,
        )
        self.commit_age = CommitAgeCollector(self.last_commit, clock)
        registry.register(self.commit_age)
        self.consumer_lag = Gauge(
            "k2_consumer_lag",
            "Events in a source partition not yet committed by the consumer group (end offset minus committed).",
            ["topic", "partition"],
            registry=registry,
        )
        self.lake_lag = Gauge(
            "k2_lake_lag",
            "Events in a source partition not yet recorded in an Iceberg snapshot (end offset minus landed).",
            ["topic", "partition"],
            registry=registry,
        )
        self.ingest_failures = Counter(
            "k2_ingest_failures_total",
            "Batches whose processing failed in a way K2 did not classify as the event's fault: the partition "
            "stopped (fail closed), nothing of the batch or after it was acknowledged.",
            ["topic"],
            registry=registry,
        )
        self.ingest_stopped = Gauge(
            "k2_ingest_stopped_partitions",
            "Source partitions stopped after a failure (they resume from the committed offset when revoked).",
            ["topic"],
            registry=registry,
        )
        self.ingest_discontinuities = Counter(
            "k2_ingest_discontinuities_total",
            "Batches that did not start where the previous one ended (records in between never reached K2): "
            "refused, and the partition sought back.",
            ["topic"],
            registry=registry,
        )
        self.offsets_lost_to_retention = Counter(
            "k2_offsets_lost_to_retention_total",
            "Offsets never landed that Kafka deleted (retention) before this worker could read them.",
            ["topic"],
            registry=registry,
        )
        self.not_consuming = Gauge(
            "k2_partitions_not_consuming",
            "Source partitions this worker holds that are not consuming past their bound (K2_POSITION_TIMEOUT_S after "
            "their tables were restored): readiness names them.",
            ["topic"],
            registry=registry,
        )
        self.assignment_to_consuming = Histogram(
            "k2_partition_assignment_to_consuming_seconds",
            "Time from a partition's assignment to its consuming (table restore and positioning included).",
            buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
            registry=registry,
        )
        self.ingest_block_seconds = Histogram(
            "k2_ingest_block_seconds",
            "One block of a fetch, from its first admission to its last write handed to Kafka: the loop runs nothing "
            "else meanwhile (timers, flushes, other agents) but while a write waits for room in the producer's queue. "
            "K2_INGEST_BLOCK_MAX bounds its records.",
            ["topic"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.batches_in_flight = Gauge(
            "k2_batches_in_flight",
            "Batches taken whose writes the broker has not acknowledged yet.",
            registry=registry,
        )
        self._lag_labels: set[tuple[str, str]] = set()
        self._last_commit_s: dict[str, float] = {}
        # Market-data guarantees: sequence tracking and reference data (k2.sequence, k2.reference).
        self.sequence_events = Counter(
            "k2_sequence_events_total",
            "Trades and quotes by what sequence tracking found: first, in_order, gap, out_of_order, reset, "
            "duplicate, conflict; untracked (no sequence number); redelivered (re-consumed after a restart, "
            "decided before); unresolved (re-delivered beyond the decision log).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.sequence_gaps = Counter(
            "k2_sequence_gaps_total",
            "Gaps in sequence numbers, by severity (small: fewer than 10 numbers missing; large: 10 or more).",
            ["topic", "severity"],
            registry=registry,
        )
        self.sequence_missing = Counter(
            "k2_sequence_missing_total",
            "Sequence numbers missing in the gaps found, by gap severity.",
            ["topic", "severity"],
            registry=registry,
        )
        self.unknown_instruments = Counter(
            "k2_unknown_instrument_events_total",
            "Trades and quotes whose symbol the reference data does not know (landed, not rejected).",
            ["topic", "symbol"],
            registry=registry,
        )
        self.instrument_mismatches = Counter(
            "k2_instrument_mismatch_events_total",
            "Trades and quotes whose company_id contradicts the reference data for their symbol (landed).",
            ["topic", "symbol"],
            registry=registry,
        )
        self.reference_companies = Gauge(
            "k2_reference_companies", "Companies in the reference-data table held by this worker.", registry=registry
        )

    def init_labels(self, topics: Iterable[str], tables: Iterable[str]) -> None:
        """Export 0 for every known topic and table from the start.

        A labelled counter has no series until first incremented, and ``rate()`` or
        ``increase()`` over a missing series is empty, not zero: an alert on commit
        failures would stay silent for the first failure.
        """
        for topic in topics:
            for counter in (
                self.events_consumed,
                self.events_accepted,
                self.events_batch_path,
                self.ingest_failures,
                self.ingest_discontinuities,
                self.offsets_lost_to_retention,
            ):
                counter.labels(topic)
            self.ingest_stopped.labels(topic)
            self.not_consuming.labels(topic)
            self.ingest_block_seconds.labels(topic)
        for table in tables:
            for metric in (
                self.flushes,
                self.commit_attempts,
                self.rows_written,
                self.rows_skipped,
                self.commit_failures,
            ):
                metric.labels(table)
            self.buffered_rows.labels(table)

    def rejects_by_reason(self) -> dict[tuple[str, str], float]:
        """``(topic, reason)`` -> rejects this worker counted since it started."""
        out: dict[tuple[str, str], float] = {}
        for family in self.events_rejected.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["topic"], sample.labels["reason"])] = sample.value
        return out

    def record_commit(self, table: str, at_s: float) -> None:
        """Move a table's last-commit time forward, never back (a snapshot read later may be older)."""
        if at_s > self._last_commit_s.get(table, float("-inf")):
            self._last_commit_s[table] = at_s
            self.last_commit.labels(table).set(at_s)

    def publish_not_consuming(self, by_topic: dict[str, int]) -> None:
        """Partitions past their bound per topic (every known topic is set: 0 when none)."""
        for metric in self.not_consuming.collect():
            for sample in metric.samples:
                self.not_consuming.labels(sample.labels["topic"]).set(by_topic.get(sample.labels["topic"], 0))
        for topic, count in by_topic.items():
            self.not_consuming.labels(topic).set(count)

    def publish_lag(self, rows: Iterable[PartitionLag]) -> None:
        """Set both lag gauges for the partitions this worker owns; drop the partitions it no longer owns."""
        seen = set()
        for row in rows:
            labels = (row.topic, str(row.partition))
            seen.add(labels)
            self.consumer_lag.labels(*labels).set(row.consumer_lag)
            self.lake_lag.labels(*labels).set(row.lake_lag)
        for labels in self._lag_labels - seen:
            self.consumer_lag.remove(*labels)
            self.lake_lag.remove(*labels)
        self._lag_labels = seen


class CommitAgeCollector(Collector):
    """``k2_iceberg_last_commit_age_seconds``: now minus the last-commit timestamp, per table, at scrape time.

    Tables that never committed have no timestamp and so no age (alert on buffered rows
    without a commit for those).
    """

    NAME = "k2_iceberg_last_commit_age_seconds"
    HELP = "Seconds since the last successful Iceberg commit per table, computed when scraped."

    def __init__(self, last_commit: Gauge, clock: Callable[[], float] = time.time) -> None:
        self._last_commit = last_commit
        self._clock = clock

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["table"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["table"])
        now = self._clock()
        for metric in self._last_commit.collect():
            for sample in metric.samples:
                family.add_metric([sample.labels["table"]], max(0.0, now - sample.value))
        yield family
