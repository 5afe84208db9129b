"""The Faust application. ``faust -A k2.app worker`` needs nothing but ``app`` here.

:func:`create_app` builds everything explicitly, in one place and in one order: the
topics, the tables, the pipeline service that owns the per-process state, the agents,
timers and views over it. Nothing here does I/O: the pipeline loads the catalog and opens
the registry client when the worker starts it, so a CLI or a test can import the app
without a broker, and a test can build its own app from its own settings and registry.
"""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import REGISTRY, CollectorRegistry

from k2.agents.ingest import register_ingest
from k2.agents.market import Market, build_market, bytes_table
from k2.agents.timers import register_timers
from k2.avro.schemas import subject_for_topic
from k2.buffer.store import ChunkStore
from k2.errors import SettingsError
from k2.ingest.processor import Source
from k2.kafka.batches import BATCH_SCHEMA
from k2.kafka.credentials import broker_credentials
from k2.kafka.transport import SCHEME
from k2.lake.arrow import companies_to_arrow, events_to_arrow
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, TRADES
from k2.lake.writer import default_worker_id
from k2.metrics import K2Metrics
from k2.observe.health import Readiness
from k2.observe.watch import LagWatch
from k2.pipeline.service import Pipeline, Wiring
from k2.secrets import install_log_redaction, redactor_for
from k2.settings import Settings, get_settings
from k2.validation import quote_rows, trade_rows, validate_quote, validate_reference, validate_trade
from k2.web.views import register_views

__all__ = ["K2App", "app", "create_app", "sources"]


class K2App(faust.App):
    """A Faust app that starts K2's pipeline service with it (before its consumer, stopped after it)."""

    pipeline: Pipeline | None = None
    market: Market | None = None
    k2_settings: Settings | None = None
    """K2's own settings (what faust's configuration has no name for: the fetch's size and wait)."""

    @property
    def batch_sink(self) -> Pipeline | None:
        """What :class:`k2.kafka.consumer.K2Consumer` delivers batches of K2's source topics to."""
        return self.pipeline

    def on_init_dependencies(self) -> Any:
        deps = list(super().on_init_dependencies())
        return [self.pipeline, *deps] if self.pipeline is not None else deps

    async def on_stop(self) -> None:
        """SIGTERM: flush what is buffered while the consumer and producer still run, then faust's own stop
        (which commits the offsets of what is durable)."""
        if self.pipeline is not None:
            try:
                await self.pipeline.drain()
            except Exception:  # the changelogs hold what did not land: the next owner lands it
                self.log.exception("shutdown: draining the pipeline failed")
        await super().on_stop()


def sources(settings: Settings) -> list[Source]:
    """K2's three source topics: each with its contract's subject, its rules, its tables and its Arrow recipe."""

    def market(table: str) -> Any:
        return lambda events, now_ms, schema: events_to_arrow(table, events, schema, sort=False)

    def reference(events: Any, now_ms: int, schema: Any) -> Any:
        return companies_to_arrow(events, now_ms, schema, sort=False)

    trades, quotes, ref = settings.trades_topic, settings.quotes_topic, settings.reference_topic
    return [
        Source(trades, subject_for_topic(trades), validate_trade, (TRADES,), market(TRADES), trade_rows),
        Source(quotes, subject_for_topic(quotes), validate_quote, (QUOTES,), market(QUOTES), quote_rows),
        Source(ref, subject_for_topic(ref), validate_reference, (COMPANY_VERSIONS, COMPANIES), reference),
    ]


def create_app(settings: Settings | None = None, registry: CollectorRegistry = REGISTRY) -> K2App:
    """Build the Faust app from K2's settings (read once from ``K2_*`` variables) and a metrics registry."""
    s = settings or get_settings()
    worker_id = s.worker_id or default_worker_id()
    app = K2App(
        s.app_id,
        broker=[f"{SCHEME}://{hostport.strip()}" for hostport in s.kafka_bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(s),
        # The group's members are told apart by this (`k2 status`, the broker's logs): faust's default is
        # its own version, the same for every worker.
        broker_client_id=f"k2-{worker_id}",
        autodiscover=False,
        origin="k2",
        # Chunks live in memory and in their changelog; a restarted worker restores them.
        store="memory://",
        # No standby copies of other workers' table partitions: a standby follows every chunk and
        # every sequence-state write of its peers through faust's per-message path, which doubled
        # the CPU per event of two workers (bench/compare.py k2x2: 46.9 CPU s/M against 23.4 for one).
        # A new owner restores from the changelog instead. Global tables (reference data) are still
        # followed by every worker.
        table_standby_replicas=0,
        topic_partitions=s.trades_partitions,
        topic_replication_factor=s.replication_factor,
        # A new consumer group starts at the beginning: the lake must hold every event.
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        # A member hears that the group rebalances at its next heartbeat: every takeover waits for
        # the survivors' heartbeats (half an interval on average). One a second costs a request a second.
        broker_heartbeat_interval=1.0,
        broker_max_poll_records=s.ingest_batch_max,
        # Each item of an ingest agent's queue is a whole fetch of its topic: a few are enough to keep it
        # busy, and the queue is what a worker holds in memory when the sink cannot keep up.
        stream_buffer_maxsize=4,
        producer_acks=-1,
        producer_max_request_size=s.max_message_bytes,
        # No producer compression: chunks are Arrow IPC with LZ4-compressed buffers already (k2.buffer.chunks).
        producer_compression_type=None,
        web_bind=s.web_host,
        web_port=s.web_port,
        web_metrics_enabled=True,
        # Partitions added to a source topic reach the group when the leader's metadata is refreshed.
        consumer_metadata_max_age_ms=int(s.metadata_refresh_s * 1000),
        producer_metadata_max_age_ms=int(s.metadata_refresh_s * 1000),
    )
    metrics = K2Metrics(registry)
    wanted = sources(s)
    topics = {src.topic: app.topic(src.topic, schema=BATCH_SCHEMA, acks=False, internal=False) for src in wanted}
    rejects = app.topic(s.rejects_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    partitions = {
        s.trades_topic: s.trades_partitions,
        s.quotes_topic: s.quotes_partitions,
        s.reference_topic: s.reference_partitions,
    }
    stores = {
        src.topic: ChunkStore(
            bytes_table(
                app,
                f"buffer-{src.topic}",
                partitions[src.topic],
                f"Arrow chunks of {src.topic} not yet committed to Iceberg.",
                s,
            ),
            src.topic,
        )
        for src in wanted
    }
    market = build_market(app, s, metrics, worker_id)
    table_topics = {
        src.topic: [
            table.changelog_topic.get_topic_name()
            for table in (stores[src.topic].table, *market.state_tables.get(src.topic, ()))
        ]
        for src in wanted
    }
    pipeline = Pipeline(app, s, metrics, Wiring(wanted, stores, market.stages, rejects, table_topics), worker_id)
    app.pipeline, app.market, app.k2_settings = pipeline, market, s
    lag = LagWatch(
        app, pipeline, metrics, interval_s=min(5.0, max(2.0, s.flush_interval_s)), timeout_s=s.catalog_timeout_s
    )
    names = {s.trades_topic: "trades", s.quotes_topic: "quotes", s.reference_topic: "reference"}
    register_ingest(app, pipeline, {names[name]: topic for name, topic in topics.items()})
    register_timers(app, pipeline, lag)
    redact = redactor_for(s)
    install_log_redaction(redact)
    readiness = Readiness(app, pipeline, lag)
    register_views(app, pipeline, metrics, market.instruments, market.watch, lag, readiness, redact)
    return app


try:
    app = create_app()
except SettingsError as exc:  # one line for the operator, not a traceback from inside faust's import
    raise SystemExit(f"k2 worker: {exc}") from None
