"""Which instruments exist, per the reference data, and the ticks that do not fit them.

The reference data (``market.reference_data``, compacted, keyed by ``company_id``) is
kept in a Faust *global* table: every worker holds all of it, because any worker may
receive a trade of any symbol. The reference agent writes it (one write per company per
batch); the other workers follow the table's changelog as standbys. Lookups go through a
symbol index (:class:`Instruments`) rebuilt only when the table changed.

A trade or quote whose symbol is unknown is *not* rejected (the reference data may come
later), nor one whose ``company_id`` contradicts it: both are counted per symbol
(metrics, bounded to :data:`LABEL_LIMIT` symbols) and listed by ``/k2/instruments``.
"Contradicts" means the reference data lists the symbol, but under other company ids
only; a symbol listed for several companies (a reused ticker) accepts each of them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from k2.buffer.changelog import ChangelogWriter
from k2.buffer.chunks import ChunkKey
from k2.ingest.frames import JOINED
from k2.ingest.processor import Taken, partition_slices
from k2.lake.arrow import SMALL_BATCH_ROWS
from k2.lake.schemas import KAFKA_POSITION
from k2.metrics import K2Metrics
from k2.models import ReferenceData

__all__ = [
    "LABEL_LIMIT",
    "OTHER_LABEL",
    "InstrumentCheck",
    "InstrumentWatch",
    "Instruments",
    "ReferenceUpdate",
    "check_batch",
    "instruments_payload",
    "latest_by_company",
]

LABEL_LIMIT = 1000
"""Distinct symbols a per-symbol metric carries; the rest are counted under :data:`OTHER_LABEL`."""
OTHER_LABEL = "_other"

_FIELDS = tuple(ReferenceData._options.fields)


def _as_dict(value: Any) -> dict[str, Any]:
    """A reference value as stored (a ``ReferenceData`` record, or a dict) as a plain dict."""
    if isinstance(value, ReferenceData):
        return {f: getattr(value, f) for f in _FIELDS}
    return dict(value)


class Instruments:
    """A symbol index over the reference table's ``data`` (``str(company_id)`` -> reference record)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data
        self._by_symbol: dict[str, frozenset[int]] = {}
        self._stale = True

    def changed(self, *_: Any) -> None:
        """Mark the index stale (after a write here, or a changelog event applied from another worker)."""
        self._stale = True

    def by_symbol(self) -> Mapping[str, frozenset[int]]:
        """Symbol -> the company ids the reference data lists for it."""
        if self._stale:
            index: dict[str, set[int]] = {}
            for value in list(self._data.values()):
                rec = _as_dict(value)
                index.setdefault(rec["symbol"], set()).add(int(rec["company_id"]))
            self._by_symbol = {s: frozenset(ids) for s, ids in index.items()}
            self._stale = False
        return self._by_symbol

    def companies(self) -> list[dict[str, Any]]:
        """Every company, by symbol then company id."""
        rows = [_as_dict(v) for v in list(self._data.values())]
        return sorted(rows, key=lambda r: (r["symbol"], r["company_id"]))


SMALL_BATCH = SMALL_BATCH_ROWS
"""Rows below which :func:`check_batch` counts in Python (see :data:`~k2.lake.arrow.SMALL_BATCH_ROWS`)."""


def check_batch(
    rows: pa.Table, by_symbol: Mapping[str, frozenset[int]]
) -> tuple[Counter[str], Counter[tuple[str, int]]]:
    """Rows whose symbol is unknown (by symbol), and whose company id contradicts it (by symbol, id). Pure."""
    unknown: Counter[str] = Counter()
    mismatched: Counter[tuple[str, int]] = Counter()
    if rows.num_rows < SMALL_BATCH:  # a live batch: counted in Python, cheaper than Arrow's group_by call
        pairs = Counter(zip(rows.column("symbol").to_pylist(), rows.column("company_id").to_pylist(), strict=True))
        groups = [(symbol, company_id, n) for (symbol, company_id), n in pairs.items()]
    else:
        counts = rows.group_by(["symbol", "company_id"], use_threads=False).aggregate([([], "count_all")])
        groups = list(
            zip(
                counts.column("symbol").to_pylist(),
                counts.column("company_id").to_pylist(),
                counts.column("count_all").to_pylist(),
                strict=True,
            )
        )
    for symbol, company_id, n in groups:
        ids = by_symbol.get(symbol)
        if ids is None:
            unknown[symbol] += n
        elif company_id not in ids:
            mismatched[(symbol, company_id)] += n
    return unknown, mismatched


class InstrumentWatch:
    """What this worker saw of symbols the reference data does not vouch for, and the metrics of it."""

    def __init__(self, metrics: K2Metrics, label_limit: int = LABEL_LIMIT) -> None:
        self.metrics = metrics
        self.unknown: Counter[tuple[str, str]] = Counter()
        """``(topic, symbol)`` -> events seen while the symbol was unknown."""
        self.mismatched: Counter[tuple[str, str, int]] = Counter()
        """``(topic, symbol, company_id)`` -> events whose company id the reference data contradicts."""
        self._labels: set[str] = set()
        self._label_limit = label_limit

    def _label(self, symbol: str) -> str:
        if symbol in self._labels:
            return symbol
        if len(self._labels) < self._label_limit:
            self._labels.add(symbol)
            return symbol
        return OTHER_LABEL

    def add(self, topic: str, unknown: Counter[str], mismatched: Counter[tuple[str, int]]) -> None:
        for symbol, n in unknown.items():
            self.unknown[(topic, symbol)] += n
            self.metrics.unknown_instruments.labels(topic, self._label(symbol)).inc(n)
        for (symbol, company_id), n in mismatched.items():
            self.mismatched[(topic, symbol, company_id)] += n
            self.metrics.instrument_mismatches.labels(topic, self._label(symbol)).inc(n)


class InstrumentCheck:
    """A trades or quotes :class:`~k2.ingest.processor.Stage`: count what does not fit the reference data."""

    def __init__(self, topic: str, instruments: Instruments, watch: InstrumentWatch) -> None:
        self.topic = topic
        self.instruments = instruments
        self.watch = watch

    def __call__(self, batch: Taken, now_ms: int) -> list[tuple[ChunkKey, pa.Table]]:
        if batch.rows is not None and batch.rows.num_rows:
            unknown, mismatched = check_batch(batch.rows, self.instruments.by_symbol())
            if unknown or mismatched:
                self.watch.add(self.topic, unknown, mismatched)
        return []

    async def persist(self, partition: int) -> list[asyncio.Future[Any]]:
        """Nothing to persist: the watch is counters only."""
        return []


def latest_by_company(rows: pa.Table) -> dict[str, dict[str, Any]]:
    """``str(company_id)`` -> fields of the last version of each company in ``rows`` (in offset order). Pure.

    ``rows`` are reference-data rows as their table holds them (dates as dates); the fields
    are the contract's (dates as ISO strings), what :class:`ReferenceData` holds.
    """
    latest: dict[str, dict[str, Any]] = {}
    for row in rows.select(list(_FIELDS)).to_pylist():  # offset order: the last one wins
        for name in ("start_date", "end_date"):
            if row[name] is not None:
                row[name] = row[name].isoformat()
        latest[str(row["company_id"])] = row
    return latest


class ReferenceUpdate:
    """The reference-data :class:`~k2.ingest.processor.Stage`: keep the global table current.

    One write per company per batch, into the changelog partition of the source event
    (the table has as many partitions as the topic), named explicitly like every K2 write.
    """

    def __init__(self, table: Any, instruments: Instruments, metrics: K2Metrics) -> None:
        self.table = table
        self.instruments = instruments
        self.metrics = metrics
        self.changelog = ChangelogWriter(table)
        self._changes: dict[int, list[tuple[str, ReferenceData]]] = {}

    def __call__(self, batch: Taken, now_ms: int) -> list[tuple[ChunkKey, pa.Table]]:
        changed = False
        for partition, rows in _by_partition(batch):
            for key, fields in latest_by_company(rows).items():
                value = ReferenceData(**fields)
                self.table.data[key] = value
                self._changes.setdefault(partition, []).append((key, value))
                changed = True
        if changed:
            self.instruments.changed()
        self.metrics.reference_companies.set(len(self.table.data))
        return []

    async def persist(self, partition: int) -> list[asyncio.Future[Any]]:
        """Send the company writes of ``partition``'s batch to the changelog; returns their deliveries."""
        changes = self._changes.pop(partition, [])
        return [await self.changelog.send(partition, key, value, value_serializer=None) for key, value in changes]


def _by_partition(batch: Taken) -> list[tuple[int, pa.Table]]:
    """The batch's rows per partition (joined batches' rows are in partition order)."""
    rows = batch.rows
    if rows is None or not rows.num_rows:
        return []
    if batch.frames.partition != JOINED:
        return [(batch.frames.partition, rows)]
    return list(partition_slices(rows, KAFKA_POSITION.partition_column).items())


def instruments_payload(instruments: Instruments, watch: InstrumentWatch) -> dict[str, Any]:
    """The body of ``/k2/instruments`` (what this worker knows and saw). Pure."""
    by_symbol = instruments.by_symbol()
    unknown: dict[str, dict[str, Any]] = {}
    for (topic, symbol), n in sorted(watch.unknown.items()):
        entry = unknown.setdefault(symbol, {"symbol": symbol, "events": {}, "known_now": symbol in by_symbol})
        entry["events"][topic] = n
    mismatched = [
        {
            "symbol": symbol,
            "company_id": company_id,
            "reference_company_ids": sorted(by_symbol.get(symbol, ())),
            "topic": topic,
            "events": n,
        }
        for (topic, symbol, company_id), n in sorted(watch.mismatched.items())
    ]
    return {
        "known": instruments.companies(),
        "unknown_symbols": list(unknown.values()),
        "company_mismatches": mismatched,
    }
