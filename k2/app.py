"""The Faust application. ``faust -A k2.app worker`` needs nothing but ``app`` here.

This module only builds the app; agents, tables and views live in ``k2.agents`` and
``k2.web`` and are found by autodiscovery, so importing the app stays cheap and free of
I/O (a CLI or a test can import it without a broker).
"""

from __future__ import annotations

import faust

from k2.settings import Settings, get_settings

__all__ = ["app", "create_app"]


class K2App(faust.App):
    """A Faust app whose autodiscovery fails loudly.

    Faust logs a module that fails to import as a warning and starts the worker anyway,
    which here would mean a healthy-looking worker that consumes nothing. K2 stops instead.
    """

    def _on_autodiscovery_error(self, name: str) -> None:
        raise


def create_app(settings: Settings | None = None) -> faust.App:
    """Build the Faust app from K2's settings (read once from ``K2_*`` variables)."""
    s = settings or get_settings()
    return K2App(
        s.app_id,
        broker=[f"kafka://{hostport.strip()}" for hostport in s.kafka_bootstrap_servers.split(",")],
        autodiscover=["k2.agents", "k2.web"],
        origin="k2",
        # Chunks live in memory and in their changelog; a restarted worker restores them.
        store="memory://",
        topic_partitions=s.trades_partitions,
        topic_replication_factor=s.replication_factor,
        # A new consumer group starts at the beginning: the lake must hold every event.
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Chunks (Arrow IPC) and rejects go out compressed; consumers read any codec.
        producer_compression_type="lz4",
        web_bind=s.web_host,
        web_port=s.web_port,
        web_metrics_enabled=True,
        # Micro-batches are flushed by K2's sink; Faust's own commit cadence stays default.
    )


app = create_app()
