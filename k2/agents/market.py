"""The Faust tables of the market-data guarantees, and their steps in the ingress processors.

* ``sequences-<topic>`` (trades, quotes): sequence state per (exchange, symbol),
  co-partitioned with its source topic like the buffers, so the worker that owns a
  source partition owns its sequence state, and a new owner restores it (no false gaps
  after a restart or a rebalance). See :mod:`k2.sequence`.
* ``reference-<topic>``: the reference data as a *global* table: every worker holds every
  company. The reference agent writes it; other workers apply its changelog as standbys,
  and each write or applied change marks the symbol index stale. faust advises one
  partition and a recovery buffer of 1 for global tables shared by several workers; the
  reference topic has one partition by default.

Stages run in the ingress agents, inside stream iteration, before a batch is acked.
"""

from __future__ import annotations

from typing import Any

from k2.agents.wiring import bytes_table, metrics, runtime, settings
from k2.app import app
from k2.models import ReferenceData
from k2.reference.instruments import InstrumentCheck, Instruments, InstrumentWatch, ReferenceUpdate
from k2.sequence.stage import SequenceStage

__all__ = ["instruments", "reference_table", "sequence_tables", "watch"]


def _sequence_table(source: str, partitions: int) -> Any:
    doc = f"Sequence state per (exchange, symbol) of {source}: last number, its time, recent window."
    return bytes_table(f"sequences-{source}", partitions, doc)


sequence_tables = {
    settings.trades_topic: _sequence_table(settings.trades_topic, settings.trades_partitions),
    settings.quotes_topic: _sequence_table(settings.quotes_topic, settings.quotes_partitions),
}


async def _reference_changed(event: Any) -> None:
    instruments.changed()


reference_table = app.GlobalTable(
    f"reference-{settings.reference_topic}",
    key_type=str,
    value_type=ReferenceData,
    partitions=settings.reference_partitions,
    recovery_buffer_size=1,
    on_changelog_event=_reference_changed,
    help="Reference data by company_id, on every worker.",
)

instruments = Instruments(reference_table.data)
watch = InstrumentWatch(metrics)

for _topic, _table in sequence_tables.items():
    runtime.add_stage(_topic, SequenceStage(_topic, _table, settings.dedup_window, metrics, runtime.worker_id))
    runtime.add_stage(_topic, InstrumentCheck(_topic, instruments, watch))
runtime.add_stage(settings.reference_topic, ReferenceUpdate(reference_table, instruments, metrics))
