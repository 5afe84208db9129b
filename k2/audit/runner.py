"""``audit()``: read the lake, ask Kafka, judge, and re-read once if asked to let flushes settle.

The only module of :mod:`k2.audit` that does I/O in sequence; the judging is pure
(:mod:`k2.audit.judge`). The lake is read *before* Kafka's log bounds: a mark is always
below a log end read after it, so a busy topic never looks like "mark beyond end".

Kafka is asked in rounds, each no larger than the one before needs: the holes the lake
leaves (are they records, or markers and compacted offsets?); then, only for partitions
where a hole held no record (a partition with transactions or compaction in it), the
whole judged window, which tells aborted records apart; then, for partitions with lag,
the first record above the mark (trailing markers are no lag) and how long it has waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from pyiceberg.catalog import Catalog

from k2.admin.group import GroupAdmin
from k2.admin.watermarks import FirstRecord, LogEnds
from k2.audit.judge import judge_lake, lake_topics, law_tables, settle
from k2.audit.kafka import KafkaLog, LogReader
from k2.audit.lake import LakeRead, read_lake
from k2.audit.ranges import Ranges
from k2.audit.report import AuditReport
from k2.audit.verdict import PartitionVerdict, confirm_missing
from k2.catalog import describe_catalog
from k2.errors import NotInitialised, ServiceUnavailable
from k2.lake.records import TopicPartition
from k2.observe.group import Group, unowned_line
from k2.settings import Settings

__all__ = ["audit", "verify_missing"]


def audit(
    settings: Settings,
    catalog: Catalog,
    *,
    settle_s: float = 0.0,
    to_end: bool = False,
    log: LogReader | None = None,
    group: GroupAdmin | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> AuditReport:
    """Whether every offset of the source topics landed exactly once in exactly one table.

    Args:
        settle_s: when offsets are missing (or companies rows wrong), wait this long,
            re-read the lake and report only what is still wrong: a flush in flight is
            then no false alarm. 0 reads once.
        to_end: judge every partition up to its end (the last stable offset), not up to the
            lake's mark: what has not landed is missing, however the marks stand. For a flow
            that has ended; with ``settle_s``, what lands meanwhile is forgiven.
        log: where to read Kafka's logs; by default a :class:`~k2.audit.kafka.KafkaLog` on
            ``settings``, closed on return.
        group: where to ask who owns the partitions with records waiting (a note names those
            nobody owns); by default a :class:`~k2.admin.group.GroupAdmin` when ``log`` is
            the default too, else not asked.
        sleep, clock: how to wait and what time it is (tests pass fakes).

    Raises:
        NotInitialised: a source topic does not exist, or the catalog holds no K2 table.
        ServiceUnavailable: Kafka or the catalog cannot be reached.
        LakeCorrupt: a table's offset marks cannot be parsed.
    """
    if log is None:
        with KafkaLog(settings) as kafka:
            return audit(
                settings,
                catalog,
                settle_s=settle_s,
                to_end=to_end,
                log=kafka,
                group=group or GroupAdmin(settings),
                sleep=sleep,
                clock=clock,
            )
    report = _judge(settings, catalog, log, to_end=to_end, verify=True)
    if settle_s > 0 and (report.missing or report.companies):
        sleep(settle_s)
        report = settle(report, _judge(settings, catalog, log, to_end=to_end, verify=False), settle_s)
    report = _waiting(report, log)
    if group is None:
        return report
    try:
        found = group.group(settings.app_id)
    except ServiceUnavailable as exc:  # who owns what is a hint beside the verdict, never a reason not to give it
        return replace(report, notes=(*report.notes, f"the consumer group {settings.app_id} could not be read: {exc}"))
    return _unowned(report, found, clock)


def verify_missing(report: AuditReport, log: LogReader) -> AuditReport:
    """``report`` with each partition's candidate holes cut down to the offsets Kafka holds a record at."""
    partitions = tuple(
        confirm_missing(v, log.offsets_in(v.topic, v.partition, v.missing)) if v.missing and v.in_kafka else v
        for v in report.partitions
    )
    return replace(report, partitions=partitions)


def _judge(settings: Settings, catalog: Catalog, log: LogReader, *, to_end: bool, verify: bool) -> AuditReport:
    lake = read_lake(catalog, lake_topics(settings))
    if not any(t.exists for t in lake.tables.values()):
        raise NotInitialised(
            f"catalog {describe_catalog(catalog)} holds none of K2's tables: run `k2 init`, or point K2 at "
            "the catalog it writes to (README, Configuration)"
        )
    bounds = log.bounds(settings.source_topics)
    report = replace(judge_lake(lake, bounds, law_tables(settings), to_end=to_end), to_end=to_end)
    if not verify:
        return report
    return _read_windows(verify_missing(report, log), lake, bounds, settings, log)


def _read_windows(
    report: AuditReport,
    lake: LakeRead,
    bounds: Mapping[TopicPartition, LogEnds],
    settings: Settings,
    log: LogReader,
) -> AuditReport:
    """``report`` judged again, with the whole window read from Kafka, for each partition where a hole held no
    record: only then can rows of aborted transactions be told from committed ones."""
    flagged = {(v.topic, v.partition): v for v in report.partitions if v.no_record and v.in_kafka}
    if not flagged:
        return report
    compacted = log.compacted({topic for topic, _ in flagged})

    def window(v: PartitionVerdict) -> Ranges:
        return Ranges.of((v.log_start, v.checked_to))

    committed = {tp: log.offsets_in(*tp, window(v)) for tp, v in flagged.items()}
    uncommitted = {
        tp: log.offsets_in(*tp, window(v), committed=False) for tp, v in flagged.items() if tp[0] in compacted
    }
    again = judge_lake(
        lake,
        bounds,
        law_tables(settings),
        to_end=report.to_end,
        committed=committed,
        uncommitted=uncommitted,
        only=set(flagged),
    )
    redone = {(v.topic, v.partition): v for v in again.partitions}
    return replace(report, partitions=tuple(redone.get((v.topic, v.partition), v) for v in report.partitions))


def _waiting(report: AuditReport, log: LogReader) -> AuditReport:
    """Each partition with offsets above its mark, with the first record Kafka holds there (markers are no lag)."""
    starts = {
        (v.topic, v.partition): max(v.log_start, -1 if v.mark is None else v.mark + 1)
        for v in report.partitions
        if v.in_kafka and v.waiting
    }
    if not starts:
        return report
    found = log.first_records(starts, {(v.topic, v.partition): v.log_end for v in report.partitions})
    firsts: dict[TopicPartition, FirstRecord | None] = {tp: found.get(tp) for tp in starts}

    def waited(v: PartitionVerdict) -> PartitionVerdict:
        tp = (v.topic, v.partition)
        if tp not in firsts:
            return v
        first = firsts[tp]
        return replace(v, waiting_from=v.log_end if first is None else first.offset)

    return replace(
        report,
        partitions=tuple(waited(v) for v in report.partitions),
        waiting_since={tp: r.timestamp_ms for tp, r in firsts.items() if r is not None and r.timestamp_ms is not None},
    )


def _unowned(report: AuditReport, group: Group, clock: Callable[[], float]) -> AuditReport:
    """``report`` with a note naming the partitions that have records waiting and no owner in ``group``."""
    owners = group.owners()
    now_ms = clock() * 1000
    waiting = []
    for v in report.partitions:
        tp = (v.topic, v.partition)
        if v.waiting and v.in_kafka and tp not in owners:
            since = report.waiting_since.get(tp)
            waiting.append((f"{v.topic}/{v.partition}", v.waiting, None if since is None else (now_ms - since) / 1000))
    note = unowned_line(group, waiting)
    return report if note is None else replace(report, notes=(*report.notes, note))
