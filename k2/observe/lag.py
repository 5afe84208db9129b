"""Lag per source partition, from Kafka to the consumer group and from Kafka to the lake. Pure.

Two distances matter to someone on call, and they can differ by minutes:

* **consumer lag**: end offset minus the group's committed offset (the next offset it
  will read). Events the worker has not even buffered yet.
* **lake lag**: end offset minus the next offset after the last one recorded in an
  Iceberg snapshot summary (see :mod:`k2.lake.offsets`). Events not queryable yet:
  the consumer may be caught up while the sink is stuck, and only this number says so.

K2 reads committed data only, so ``end`` is the *last stable offset*: a transaction still
open holds back what follows it, which is neither lag nor a stall (``open_transaction``
counts it).

All offsets follow Kafka's convention for ``end`` (the next offset to be written) and
``committed`` (the next offset to be read); ``landed`` is the last offset *in* the lake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from k2.lake.records import TopicPartition
from k2.lake.status import lake_lag

__all__ = ["PartitionLag", "format_lag_table", "lag_payload", "merge_marks", "partition_lags"]


@dataclass(frozen=True)
class PartitionLag:
    """Where one source partition stands."""

    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    """Next offset the consumer group will read; None when the group has committed nothing."""
    lake_offset: int | None
    """Last offset recorded in the lake; None when no snapshot records this partition."""
    consumer_lag: int
    lake_lag: int
    open_transaction: int = 0
    """Records above the last stable offset (the end K2 reads to): a transaction still open holds them back."""


def partition_lags(
    ends: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
    landed: Mapping[TopicPartition, int],
) -> list[PartitionLag]:
    """Both lags for every partition in ``ends``, sorted by (topic, partition).

    A group that has committed nothing reads from the start (``auto_offset_reset``
    earliest), so its lag counts from offset 0: that overstates it only for a topic whose
    retention has already deleted its head, which is the safe side for an alert.
    """
    lake = lake_lag(ends, landed)
    out = []
    for tp, end in sorted(ends.items()):
        done = committed.get(tp)
        out.append(
            PartitionLag(
                topic=tp[0],
                partition=tp[1],
                end_offset=end,
                committed_offset=done,
                lake_offset=landed.get(tp),
                consumer_lag=max(0, end - (done or 0)),
                lake_lag=lake[tp],
            )
        )
    return out


def merge_marks(into: dict[TopicPartition, int], marks: Mapping[TopicPartition, int]) -> None:
    """Keep the furthest landed offset per partition (marks only move forward)."""
    for tp, offset in marks.items():
        if offset > into.get(tp, -1):
            into[tp] = offset


def lag_payload(rows: Sequence[PartitionLag]) -> dict[str, Any]:
    """The JSON body of ``/k2/lag``: one object per partition, and the totals."""
    return {
        "partitions": [asdict(r) for r in rows],
        "total": {
            "consumer_lag": sum(r.consumer_lag for r in rows),
            "lake_lag": sum(r.lake_lag for r in rows),
        },
    }


_COLUMNS = ("topic", "partition", "end offset", "committed", "in lake", "consumer lag", "lake lag")


def _cells(row: PartitionLag) -> tuple[str, ...]:
    def show(value: int | None) -> str:
        return "-" if value is None else str(value)

    return (
        row.topic,
        str(row.partition),
        str(row.end_offset),
        show(row.committed_offset),
        show(row.lake_offset),
        str(row.consumer_lag),
        str(row.lake_lag),
    )


def format_lag_table(rows: Iterable[PartitionLag]) -> str:
    """An aligned table for a terminal: text left-aligned, numbers right-aligned, a total line.

    ``committed`` is the next offset the group reads, ``in lake`` the last offset landed;
    ``-`` means none yet.
    """
    rows = list(rows)
    body = [_cells(r) for r in rows]
    total = ("total", "", "", "", "", str(sum(r.consumer_lag for r in rows)), str(sum(r.lake_lag for r in rows)))
    widths = [max(len(line[i]) for line in (_COLUMNS, *body, total)) for i in range(len(_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(_COLUMNS), rule, *(line(c) for c in body), rule, line(total)]) + "\n"
