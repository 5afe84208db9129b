"""K2's own Prometheus metrics, bundled in one object built from an injected registry.

Like faust's ``PrometheusMonitor``: production uses the process-wide default registry,
each test a fresh ``CollectorRegistry()`` so metric movements are asserted exactly.
Names follow Prometheus conventions: ``k2_`` prefix, base units, ``_total`` counters.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["K2Metrics"]

_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class K2Metrics:
    """Every metric K2 exports besides faust's own."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "k2_events_consumed_total", "Records read from a source topic.", ["topic"], registry=registry
        )
        self.events_accepted = Counter(
            "k2_events_accepted_total", "Records that passed schema and domain checks.", ["topic"], registry=registry
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
