"""The Faust tables of the market-data guarantees, and the stages that use them.

* ``sequences-<topic>`` (trades, quotes): sequence state per (exchange, symbol),
  co-partitioned with its source topic like the buffers, so the worker that owns a
  source partition owns its sequence state, and a new owner restores it (no false gaps
  after a restart or a rebalance). See :mod:`k2.sequence`.
* ``reference-<topic>``: the reference data as a *global* table: every worker holds every
  company. The reference stage writes it; other workers apply its changelog as standbys,
  and each write or applied change marks the symbol index stale. faust advises one
  partition and a recovery buffer of 1 for global tables shared by several workers; the
  reference topic has one partition by default.

Stages run in the pipeline, on each batch of their topic, before its writes are handed to
Kafka (:mod:`k2.ingest.processor`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from k2.admin.changelogs import changelog_topic_configs
from k2.ingest.processor import Stage
from k2.metrics import K2Metrics
from k2.models import ReferenceData
from k2.reference.instruments import InstrumentCheck, Instruments, InstrumentWatch, ReferenceUpdate
from k2.sequence.stage import SequenceStage
from k2.settings import Settings

__all__ = ["Market", "build_market", "bytes_table"]


def bytes_table(app: faust.App, name: str, partitions: int, help: str, settings: Settings) -> Any:
    """A changelog-backed table of raw bytes by string key, with as many partitions as its source topic."""
    return app.Table(
        name,
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        help=help,
        extra_topic_configs=changelog_topic_configs(settings),
    )


@dataclass(frozen=True)
class Market:
    """The stages per source topic, and what the views show of the reference data."""

    stages: Mapping[str, Sequence[Stage]]
    state_tables: Mapping[str, Sequence[Any]]
    """Per source topic, the tables co-partitioned with it that its stages write (sequence state)."""
    reference_table: Any
    instruments: Instruments
    watch: InstrumentWatch


def build_market(app: faust.App, settings: Settings, metrics: K2Metrics, worker_id: str) -> Market:
    """Declare the sequence and reference tables on ``app`` and build the stages over them."""
    sequence_tables = {
        topic: bytes_table(
            app,
            f"sequences-{topic}",
            partitions,
            f"Sequence state per (exchange, symbol) of {topic}: last number, its time, recent window.",
            settings,
        )
        for topic, partitions in (
            (settings.trades_topic, settings.trades_partitions),
            (settings.quotes_topic, settings.quotes_partitions),
        )
    }
    instruments: Instruments

    async def reference_changed(event: Any) -> None:
        instruments.changed()

    reference_table = app.GlobalTable(
        f"reference-{settings.reference_topic}",
        key_type=str,
        value_type=ReferenceData,
        partitions=settings.reference_partitions,
        recovery_buffer_size=1,
        on_changelog_event=reference_changed,
        extra_topic_configs=changelog_topic_configs(settings),
        help="Reference data by company_id, on every worker.",
    )
    instruments = Instruments(reference_table.data)
    watch = InstrumentWatch(metrics)
    stages: dict[str, list[Stage]] = {}
    for topic, table in sequence_tables.items():
        stages[topic] = [
            SequenceStage(topic, table, settings.dedup_window, metrics, worker_id),
            InstrumentCheck(topic, instruments, watch),
        ]
    stages[settings.reference_topic] = [ReferenceUpdate(reference_table, instruments, metrics)]
    return Market(
        stages, {topic: [table] for topic, table in sequence_tables.items()}, reference_table, instruments, watch
    )
