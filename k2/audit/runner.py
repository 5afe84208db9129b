"""``audit()``: read the lake, ask Kafka, judge, and re-read once if asked to let flushes settle.

The only module of :mod:`k2.audit` that does I/O in sequence; the judging is pure
(:mod:`k2.audit.judge`). The lake is read *before* Kafka's log bounds: a mark is always
below a log end read after it, so a busy topic never looks like "mark beyond end".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from pyiceberg.catalog import Catalog

from k2.audit.judge import judge_lake, lake_topics, law_tables, settle
from k2.audit.kafka import KafkaLog, LogReader
from k2.audit.lake import read_lake
from k2.audit.report import AuditReport
from k2.audit.verdict import confirm_missing
from k2.catalog import describe_catalog
from k2.errors import NotInitialised
from k2.settings import Settings

__all__ = ["audit", "verify_missing"]


def audit(
    settings: Settings,
    catalog: Catalog,
    *,
    settle_s: float = 0.0,
    log: LogReader | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> AuditReport:
    """Whether every offset of the source topics landed exactly once in exactly one table.

    Args:
        settle_s: when offsets are missing (or companies rows wrong), wait this long,
            re-read the lake and report only what is still wrong: a flush in flight is
            then no false alarm. 0 reads once.
        log: where to read Kafka's logs; by default a :class:`~k2.audit.kafka.KafkaLog` on
            ``settings``, closed on return.
        sleep: how to wait (tests pass a fake).

    Raises:
        NotInitialised: a source topic does not exist, or the catalog holds no K2 table.
        ServiceUnavailable: Kafka or the catalog cannot be reached.
        LakeCorrupt: a table's offset marks cannot be parsed.
    """
    if log is None:
        with KafkaLog(settings) as kafka:
            return audit(settings, catalog, settle_s=settle_s, log=kafka, sleep=sleep)
    first = _judge(settings, catalog, log, verify=True)
    if settle_s <= 0 or not (first.missing or first.companies):
        return first
    sleep(settle_s)
    return settle(first, _judge(settings, catalog, log, verify=False), settle_s)


def verify_missing(report: AuditReport, log: LogReader) -> AuditReport:
    """``report`` with each partition's candidate holes cut down to the offsets Kafka holds a record at."""
    partitions = tuple(
        confirm_missing(v, log.offsets_in(v.topic, v.partition, v.missing)) if v.missing and v.in_kafka else v
        for v in report.partitions
    )
    return replace(report, partitions=partitions)


def _judge(settings: Settings, catalog: Catalog, log: LogReader, *, verify: bool) -> AuditReport:
    lake = read_lake(catalog, lake_topics(settings))
    if not any(t.exists for t in lake.tables.values()):
        raise NotInitialised(
            f"catalog {describe_catalog(catalog)} holds none of K2's tables: run `k2 init`, or point K2 at "
            "the catalog it writes to (README, Configuration)"
        )
    report = judge_lake(lake, log.bounds(settings.source_topics), law_tables(settings))
    return verify_missing(report, log) if verify else report
