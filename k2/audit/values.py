"""``k2 audit --values``: every audited row equal to its source record in Kafka, field by field.

Per source topic: its tables are spilled to local disk in buckets of (partition, block of
offsets) (:mod:`~k2.audit.values_lake`); then, bucket after bucket in offset order, the same
span of the partition is read from Kafka (``read_committed``, as the worker reads;
:mod:`~k2.audit.values_source`), the records the rows came from are decoded with their
writer schemas independently of the worker's decoders (:mod:`~k2.audit.values_decode`), and
every row is compared with its record in Arrow kernels (:mod:`~k2.audit.values_compare`), by
the rules of each table (:mod:`~k2.audit.values_rows`). The answer is a
:class:`~k2.audit.values_report.ValuesReport`: mismatches as offset ranges with the column
and both values.

Rows whose source Kafka does not hold (below the log start, compacted away, never
committed) are counted and not compared: whether an offset should have a row is the law's
question (``k2 audit`` without ``--values``), not this one's.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2.audit.values_lake import LakeSpill
from k2.audit.values_report import ValuesReport
from k2.audit.values_rows import Feed, compare_bucket, feeds, offset_span
from k2.audit.values_sample import BLOCK, Selection, choose
from k2.audit.values_source import SourceLog, WriterPlans
from k2.catalog import describe_catalog
from k2.errors import ServiceUnavailable
from k2.lake.schemas import TABLES
from k2.settings import Settings

__all__ = ["audit_values"]

BELOW_START = "before Kafka's log start (deleted by retention), or in a partition Kafka does not have"


def audit_values(
    settings: Settings,
    catalog: Catalog,
    *,
    sample: float | None = None,
    seed: int = 0,
    block: int = BLOCK,
    timeout_s: float = 10.0,
    spill_dir: Path | None = None,
    source: SourceLog | None = None,
    plans: WriterPlans | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ValuesReport:
    """Compare every row of K2's tables (or of a sample of blocks) with its source record.

    Args:
        sample: check this fraction of each partition's blocks (chosen by ``seed``); None: all.
        block: offsets per block (the unit of sampling and of each Kafka read).
        spill_dir: where the lake's rows are spilled while audited (default: the system's temporary folder).
        source, plans: Kafka and the registry (by default from ``settings``; the source is closed on return).

    Raises:
        NotInitialised: a source topic does not exist.
        ServiceUnavailable: Kafka, the registry or the catalog cannot be reached.
    """
    if source is None:
        with SourceLog(settings, timeout_s=timeout_s) as log:
            return audit_values(
                settings, catalog, sample=sample, seed=seed, block=block, spill_dir=spill_dir, source=log,
                plans=plans, clock=clock,
            )  # fmt: skip
    report = ValuesReport(sample=sample, seed=seed, block=block)
    started, cpu = clock(), time.process_time()
    run = _Run(catalog, source, plans or WriterPlans.from_settings(settings), report, spill_dir)
    for feed in feeds(settings):
        run.topic(feed, choose(feed.topic, source.bounds(feed.topic), block, sample, seed))
    report.records_read = source.records_read
    report.elapsed_s = clock() - started
    report.cpu_s = time.process_time() - cpu
    return report


def _load(catalog: Catalog, name: str) -> Table | None:
    try:
        return catalog.load_table(name)
    except NoSuchTableError:
        return None
    except Exception as exc:  # pyiceberg, fsspec and SQL drivers raise their own: one typed error
        raise ServiceUnavailable(
            f"cannot read {name} from Iceberg catalog {describe_catalog(catalog)}: {type(exc).__name__}: {exc}"
        ) from exc


@dataclass
class _Run:
    """What one audit reads from and writes to."""

    catalog: Catalog
    source: SourceLog
    plans: WriterPlans
    report: ValuesReport
    spill_dir: Path | None

    def topic(self, feed: Feed, selection: Selection) -> None:
        """Spill the topic's tables, then compare them bucket after bucket with the same spans of Kafka."""
        report = self.report
        if selection.totals is not None and selection.blocks is not None:
            report.blocks[feed.topic] = (sum(len(b) for b in selection.blocks.values()), sum(selection.totals.values()))
        with tempfile.TemporaryDirectory(prefix="k2-audit-values-", dir=self.spill_dir) as tmp:
            spill = LakeSpill(Path(tmp), selection)
            for name in feed.tables:
                self._spill(spill, name, feed.topic)
            report.snapshots.update(spill.snapshots)
            for (name, partition), gone in spill.below_start.items():
                report.unsourced[(name, feed.topic, partition, BELOW_START)] = gone
            resolve = self.plans.resolver(feed.topic)
            for partition, b in sorted(spill.buckets):
                lake: dict[str, pa.Table] = {}
                for name in feed.tables:
                    rows = spill.read(name, partition, b) if name in spill.schemas else None
                    if rows is not None:
                        lake[name] = rows.sort_by(TABLES[name].position.offset_column)
                if lake:
                    records = self.source.read(feed.topic, partition, *offset_span(lake))
                    compare_bucket(feed, partition, lake, records, resolve, report)

    def _spill(self, spill: LakeSpill, name: str, topic: str) -> None:
        table = _load(self.catalog, name)
        if table is None:
            note = f"{name} does not exist: not compared"
            if note not in self.report.notes:
                self.report.notes.append(note)
            return
        try:
            spill.add(name, table, TABLES[name].position, topic)
        except Exception as exc:  # the catalog's storage (or the spill's disk): one typed error
            raise ServiceUnavailable(
                f"cannot read {name} into {spill.root}: {type(exc).__name__}: {exc}. Is the catalog's storage "
                "reachable, and is there room for the spill (--spill-dir)?"
            ) from exc
