"""The whole lake judged against Kafka's log bounds: one verdict per source partition. Pure.

Which table lands which topic is K2's law (:func:`law_tables`): each source topic has its
own table, and every topic may also land in ``market_data.rejects``. ``reference_data.
companies`` (upserted) and ``market_data.sequence_gaps`` (derived) do not count towards
"exactly once", but their rows are held to their own marks, gap rows must never repeat,
and the companies rows must match their history (:mod:`k2.audit.companies`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from k2.admin.watermarks import LogEnds
from k2.audit.companies import COMPANY_COLUMNS, CompanyProblem, company_problems
from k2.audit.lake import COMPANY_ID, OFFSET, PARTITION, LakeRead
from k2.audit.ranges import EMPTY
from k2.audit.report import AuditReport
from k2.audit.verdict import PartitionVerdict, TableOffsets, judge_partition, still_missing
from k2.lake.records import TopicPartition
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, SEQUENCE_GAPS, TABLES, TRADES
from k2.settings import Settings

__all__ = ["by_partition", "judge_lake", "lake_topics", "law_tables", "settle"]

_EMPTY_OFFSETS = pa.array([], pa.int64())
_NOWHERE = LogEnds(0, 0, 0)
"""The bounds of a partition Kafka does not have."""


def law_tables(settings: Settings) -> dict[str, str]:
    """The table each source topic lands in (besides the rejects), by table name."""
    return {
        TRADES: settings.trades_topic,
        QUOTES: settings.quotes_topic,
        COMPANY_VERSIONS: settings.reference_topic,
    }


def lake_topics(settings: Settings) -> dict[str, str | None]:
    """Every table the audit reads, with the topic feeding it (None: recorded per row)."""
    return {**law_tables(settings), COMPANIES: settings.reference_topic, REJECTS: None, SEQUENCE_GAPS: None}


def by_partition(rows: pa.Table | None) -> dict[int, pa.Array]:
    """The ``offset`` column of ``rows`` split by ``partition``, each in its original order.

    One stable counting sort on the (small-ranged) partition column, then zero-copy slices:
    the order within a partition is kept, so offsets the lake wrote nearly in order stay
    nearly in order for the sort that follows.
    """
    if rows is None or rows.num_rows == 0:
        return {}
    parts = rows[PARTITION].combine_chunks()
    offsets = rows[OFFSET].combine_chunks()
    low, high = pc.min_max(parts).values()
    if low.as_py() == high.as_py():
        return {int(low.as_py()): offsets}
    order = pc.array_sort_indices(parts)
    encoded = pc.run_end_encode(parts.take(order))
    offsets = offsets.take(order)
    ends = encoded.run_ends.to_pylist()  # one entry per partition
    starts = [0, *ends[:-1]]
    return {int(p): offsets.slice(a, b - a) for p, a, b in zip(encoded.values.to_pylist(), starts, ends, strict=True)}


def judge_lake(
    lake: LakeRead,
    bounds: Mapping[TopicPartition, LogEnds],
    own_tables: Mapping[str, str],
    *,
    to_end: bool = False,
    committed: Mapping[TopicPartition, pa.Array] | None = None,
    uncommitted: Mapping[TopicPartition, pa.Array] | None = None,
    only: Collection[TopicPartition] | None = None,
) -> AuditReport:
    """Judge every partition of the topics in ``own_tables`` (table -> topic), and the companies.

    Args:
        lake: what :func:`k2.audit.lake.read_lake` read.
        bounds: the log bounds of every partition of those topics, as Kafka says.
        own_tables: each law table and the topic it lands (:func:`law_tables`).
        to_end: judge every partition up to its end, not its mark (:func:`judge_partition`).
        committed, uncommitted: per partition, the offsets Kafka holds records at over the whole
            window, as :func:`judge_partition` takes them.
        only: judge only these partitions (the others are left out of the report).
    """
    committed = committed or {}
    uncommitted = uncommitted or {}
    topics = sorted(set(own_tables.values()))
    marks = lake.marks()
    verdicts: list[PartitionVerdict] = []
    notes = [f"{name} does not exist (run `k2 init`): read as empty" for name, t in lake.tables.items() if not t.exists]
    for topic in topics:
        own = [name for name, t in own_tables.items() if t == topic]
        landed_names = [n for n in (*own, REJECTS) if n in lake.tables and lake.tables[n].exists]
        upserted_names = [n for n in (COMPANIES,) if topic == own_tables.get(COMPANY_VERSIONS) and _exists(lake, n)]
        gaps_name = SEQUENCE_GAPS if _exists(lake, SEQUENCE_GAPS) else None
        read_names = [*landed_names, *upserted_names, *([gaps_name] if gaps_name is not None else [])]
        split = {n: by_partition(lake.rows(n, topic)) for n in read_names}
        known = {p for (t, p) in bounds if t == topic}
        in_lake = {p for (t, p) in marks if t == topic} | {p for parts in split.values() for p in parts}
        for partition in sorted(known | in_lake):
            tp = (topic, partition)
            if only is not None and tp not in only:
                continue
            ends = bounds.get(tp, _NOWHERE)
            verdicts.append(
                judge_partition(
                    topic,
                    partition,
                    log_start=ends.start,
                    log_end=ends.stable,
                    log_high=ends.high,
                    to_end=to_end,
                    committed=committed.get(tp),
                    uncommitted=uncommitted.get(tp),
                    lake_mark=marks.get(tp),
                    landed=[_offsets(lake, split, n, tp) for n in landed_names],
                    gaps=_offsets(lake, split, gaps_name, tp) if gaps_name is not None else None,
                    upserted=[_offsets(lake, split, n, tp) for n in upserted_names],
                    in_kafka=tp in bounds,
                )
            )
    notes += _foreign_rows(lake, set(topics))
    notes += _shared_tables(lake, own_tables)
    return AuditReport(
        tuple(verdicts),
        companies=tuple(_companies(lake)),
        notes=tuple(notes),
        snapshots={name: t.snapshot_id for name, t in lake.tables.items()},
    )


def _offsets(
    lake: LakeRead, split: Mapping[str, Mapping[int, pa.Array]], name: str, tp: TopicPartition
) -> TableOffsets:
    """One table's offsets and own mark for one partition."""
    return TableOffsets(name, split[name].get(tp[1], _EMPTY_OFFSETS), lake.tables[name].marks.get(tp))


def _exists(lake: LakeRead, name: str) -> bool:
    return name in lake.tables and lake.tables[name].exists


def _company_rows(lake: LakeRead, name: str) -> pa.Table:
    """``company_id, kafka_partition, kafka_offset`` of every row of a company table (empty if absent)."""
    t = lake.tables.get(name)
    parts = [] if t is None else [rows.select([COMPANY_ID, PARTITION, OFFSET]) for rows in t.by_topic.values()]
    if not parts:
        return pa.table(
            {
                COMPANY_ID: pa.array([], pa.int32()),
                PARTITION: pa.array([], pa.int32()),
                OFFSET: _EMPTY_OFFSETS,
            }
        ).rename_columns(list(COMPANY_COLUMNS))
    return pa.concat_tables(parts).rename_columns(list(COMPANY_COLUMNS))


def _companies(lake: LakeRead) -> list[CompanyProblem]:
    if not (_exists(lake, COMPANIES) or _exists(lake, COMPANY_VERSIONS)):
        return []
    return company_problems(_company_rows(lake, COMPANIES), _company_rows(lake, COMPANY_VERSIONS))


def _foreign_rows(lake: LakeRead, topics: set[str]) -> list[str]:
    """Notes on rows of topics the audit does not judge (rejects or gaps of another deployment's topics)."""
    notes = []
    for name in (REJECTS, SEQUENCE_GAPS):
        t = lake.tables.get(name)
        other = {topic: rows.num_rows for topic, rows in (t.by_topic.items() if t else ()) if topic not in topics}
        if other:
            listed = ", ".join(f"{topic} ({n})" for topic, n in sorted(other.items()))
            notes.append(f"{name} holds rows of topics this audit does not judge: {listed}")
    return notes


def _shared_tables(lake: LakeRead, own_tables: Mapping[str, str]) -> list[str]:
    """Notes on tables of one topic whose marks name another topic too: their rows cannot be told apart."""
    notes = []
    for name, topic in sorted(own_tables.items()):
        t = lake.tables.get(name)
        if t is None or TABLES[name].position.topic_column is not None:
            continue
        others = sorted({tp[0] for tp in t.marks} - {topic})
        if others:
            notes.append(
                f"{name} records marks of another topic too ({', '.join(others)}): it was fed by more than one "
                f"topic, and its rows, which carry no topic, all count as {topic}'s (its offsets may read as "
                "doubled). A table is fed by one topic: give the new topic a fresh lake, or re-create the tables"
            )
    return notes


def settle(first: AuditReport, later: AuditReport, settled_s: float) -> AuditReport:
    """``later`` (the re-read) keeping only the missing offsets and companies problems found in both reads.

    Doubles, rows beyond marks and the rest are taken from the later read as they are:
    a flush in flight never removes a row.
    """
    before = {(v.topic, v.partition): v for v in first.partitions}
    # A partition first seen at the re-read had nothing missing at the first one.
    partitions = tuple(
        still_missing(before[(v.topic, v.partition)], v)
        if (v.topic, v.partition) in before
        else replace(v, missing=EMPTY)
        for v in later.partitions
    )
    return replace(
        later,
        partitions=partitions,
        companies=tuple(p for p in later.companies if p in set(first.companies)),
        settled_s=settled_s,
    )
