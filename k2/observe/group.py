"""The consumer group's view of the source partitions: who owns each one, how far the group and the lake
got, and which partitions have records waiting that no worker owns. Pure.

A worker reports only the partitions it owns (``/k2/lag``), so a partition that *no* worker
owns (a worker that never took up its assignment, a partition added to a live topic, an
empty group) is invisible from the workers. This view is the group's, read from Kafka and
the lake alone by ``k2 status``; ``k2 tables`` and ``k2 audit`` print its one line about
the unowned partitions.

Every lag is counted against the **last stable offset** and from the first record Kafka
holds (``read_committed``) at or after the position, so control markers and aborted records
are no lag, and a transaction still open is shown as open, not as lag. How long a partition
has waited is the age of its oldest record not in the lake: its Kafka timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k2.admin.watermarks import FirstRecord, LogEnds
from k2.lake.records import TopicPartition

__all__ = [
    "REBALANCING",
    "Group",
    "GroupStatus",
    "Member",
    "PartitionStatus",
    "consumer_start",
    "format_age",
    "lake_start",
    "open_transaction_line",
    "partition_statuses",
    "reuse_first",
    "unowned_line",
]

REBALANCING = frozenset({"preparing_rebalance", "completing_rebalance"})
"""Group states in which the assignment is being changed: ownership is settling."""


@dataclass(frozen=True)
class Member:
    """One member of the consumer group, as Kafka describes it."""

    member_id: str
    client_id: str
    host: str
    partitions: frozenset[TopicPartition] = frozenset()

    @property
    def label(self) -> str:
        """``client@host#…`` with the end of the member id, which tells two workers on one host apart."""
        return f"{self.client_id}@{self.host.lstrip('/')}#{self.member_id[-8:]}"


@dataclass(frozen=True)
class Group:
    """The consumer group: its state (``stable``, ``empty``, ``dead``, ``preparing_rebalance``...) and members."""

    group_id: str
    state: str
    members: tuple[Member, ...] = ()
    protocol: str = ""
    """The assignor (faust's is ``faust``)."""

    def owners(self) -> dict[TopicPartition, Member]:
        """The member each assigned partition belongs to."""
        return {tp: m for m in self.members for tp in m.partitions}

    @property
    def rebalancing(self) -> bool:
        return self.state in REBALANCING


def lake_start(ends: LogEnds, mark: int | None) -> int:
    """Where the lake's next record would be: after its mark, or the log start (a partition it never landed)."""
    return ends.start if mark is None else max(ends.start, mark + 1)


def consumer_start(ends: LogEnds, committed: int | None) -> int:
    """Where the group reads next: its committed offset, or the log start when it committed none."""
    return ends.start if committed is None else max(ends.start, committed)


def reuse_first(start: int, probed_from: int, probed: FirstRecord | None) -> tuple[bool, FirstRecord | None]:
    """Whether the first record at or after ``start`` is known from a read that began at ``probed_from``.

    It is when ``start`` lies between where that read began and the record it found (or anywhere
    above its start when it found none): no second read is needed. Returns (known, the record).
    """
    if start < probed_from:
        return False, None
    if probed is None:
        return True, None
    return (True, probed) if start <= probed.offset else (False, None)


def unowned_line(group: Group, waiting: Sequence[tuple[str, int, float | None]], limit: int = 8) -> str | None:
    """One line naming partitions with records waiting and no owner: ``(topic/partition, offsets waiting,
    seconds waited)`` each; None when there are none."""
    if not waiting:
        return None
    listed = ", ".join(f"{where} ({_plural(n, 'offset')} waiting {format_age(s)})" for where, n, s in waiting[:limit])
    more = f", and {len(waiting) - limit} more" if len(waiting) > limit else ""
    return (
        f"unowned: {listed}{more}: records beyond the lake's mark and no member of group {group.group_id} "
        f"({group.state}) owns them; see `k2 status`"
    )


def open_transaction_line(where: str, stable: int, high: int) -> str:
    """One line on a partition whose offsets ``[stable, high)`` are transactions still open: not lag, not a stall."""
    return (
        f"open transaction {where}: offsets {stable}-{high - 1} are not committed yet (neither lag nor a stall: "
        "read once the transaction commits or aborts)"
    )


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m12s``, ``3h04m``, ``2d03h``; ``?`` when not known."""
    if seconds is None:
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class PartitionStatus:
    """Where one source partition stands, for the group and for the lake."""

    topic: str
    partition: int
    ends: LogEnds
    committed: int | None
    """The group's committed offset (the next it reads); None when it committed none."""
    mark: int | None
    """The last offset the lake records; None when no table records this partition."""
    owner: Member | None
    waiting: FirstRecord | None
    """The oldest record not in the lake yet (the first Kafka holds above the mark); None: nothing waits."""
    consumer_next: FirstRecord | None
    """The first record at or after the group's position; None: the group has read everything."""

    @property
    def lake_lag(self) -> int:
        """Offsets from the oldest record not in the lake to the last stable offset."""
        return 0 if self.waiting is None else max(0, self.ends.stable - self.waiting.offset)

    @property
    def consumer_lag(self) -> int:
        """Offsets from the first record the group has not read to the last stable offset."""
        return 0 if self.consumer_next is None else max(0, self.ends.stable - self.consumer_next.offset)

    @property
    def unowned_with_lag(self) -> bool:
        """Records wait for the lake and no member of the group owns the partition: nothing will land them."""
        return self.owner is None and self.lake_lag > 0

    def waited_s(self, now_ms: int) -> float | None:
        """How long the oldest record not in the lake has waited (None: nothing waits, or it has no timestamp)."""
        if self.waiting is None or self.waiting.timestamp_ms is None:
            return None
        return max(0.0, (now_ms - self.waiting.timestamp_ms) / 1000)

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}"


def partition_statuses(
    ends: Mapping[TopicPartition, LogEnds],
    committed: Mapping[TopicPartition, int | None],
    marks: Mapping[TopicPartition, int],
    group: Group,
    waiting: Mapping[TopicPartition, FirstRecord | None],
    consumer_next: Mapping[TopicPartition, FirstRecord | None],
) -> tuple[PartitionStatus, ...]:
    """One status per partition of ``ends``, sorted by (topic, partition).

    Args:
        waiting: per partition, the first record at or after :func:`lake_start`.
        consumer_next: per partition, the first record at or after :func:`consumer_start`.
    """
    owners = group.owners()
    return tuple(
        PartitionStatus(
            tp[0],
            tp[1],
            e,
            committed.get(tp),
            marks.get(tp),
            owners.get(tp),
            waiting.get(tp),
            consumer_next.get(tp),
        )
        for tp, e in sorted(ends.items())
    )


def _first(record: FirstRecord | None) -> str:
    return "-" if record is None else str(record.offset)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class GroupStatus:
    """The group's view of every source partition, read at ``read_at_ms``."""

    group: Group
    partitions: tuple[PartitionStatus, ...]
    read_at_ms: int

    @property
    def unowned(self) -> list[PartitionStatus]:
        """Partitions with records waiting and no owner, those waiting longest first."""
        found = [p for p in self.partitions if p.unowned_with_lag]
        return sorted(found, key=lambda p: (-(p.waited_s(self.read_at_ms) or 0.0), p.topic, p.partition))

    @property
    def exit_code(self) -> int:
        """0: every partition with records waiting is owned; 1: some wait and nobody owns them."""
        return 1 if self.unowned else 0

    def _waiting(self, p: PartitionStatus) -> str:
        return f"{_plural(p.lake_lag, 'offset')} waiting {format_age(p.waited_s(self.read_at_ms))}"

    def unowned_line(self) -> str | None:
        """One line naming the partitions with records waiting and no owner; None when there are none."""
        return unowned_line(self.group, [(p.where, p.lake_lag, p.waited_s(self.read_at_ms)) for p in self.unowned])

    def lines(self) -> list[str]:
        """The terminal view: the group, the unowned partitions first, the table, open transactions, a summary."""
        g = self.group
        out = [f"group {g.group_id}: {g.state}, {_plural(len(g.members), 'member')}, assignor {g.protocol or '-'}"]
        source = {(p.topic, p.partition) for p in self.partitions}
        for m in g.members:
            owned = sorted(tp for tp in m.partitions if tp in source)
            out.append(f"  {m.label}: {_plural(len(owned), 'source partition')}")
        unowned = self.unowned
        if unowned:
            out += ["", f"NOT LANDING: {_plural(len(unowned), 'partition')} with records waiting and no owner:"]
            out += [f"  {p.where}: {self._waiting(p)} (from offset {_first(p.waiting)})" for p in unowned]
        out += ["", *self.table()]
        opened = [p for p in self.partitions if p.ends.open]
        if opened:
            out.append("")
            out += [open_transaction_line(p.where, p.ends.stable, p.ends.high) for p in opened]
        out += ["", self.summary()]
        return out

    def summary(self) -> str:
        lake = sum(p.lake_lag for p in self.partitions)
        consumer = sum(p.consumer_lag for p in self.partitions)
        figures = f"{_plural(len(self.partitions), 'partition')}, lake lag {lake:,}, consumer lag {consumer:,}"
        unowned = self.unowned
        if unowned:
            rebalancing = " (the group is rebalancing: run again in a moment)" if self.group.rebalancing else ""
            return (
                f"NOT LANDING: {_plural(len(unowned), 'partition')} with records waiting and no owner"
                f"{rebalancing}; {figures}"
            )
        return f"every partition with records waiting is owned; {figures}"

    def table(self) -> list[str]:
        header = (
            *("topic", "partition", "end", "open", "committed", "in lake"),
            *("owner", "consumer lag", "lake lag", "waited"),
        )

        def show(value: int | None) -> str:
            return "-" if value is None else str(value)

        body = [
            (
                p.topic,
                str(p.partition),
                str(p.ends.stable),
                str(p.ends.open) if p.ends.open else "-",
                show(p.committed),
                show(p.mark),
                p.owner.label if p.owner else "NONE" if p.lake_lag else "-",
                str(p.consumer_lag),
                str(p.lake_lag),
                format_age(p.waited_s(self.read_at_ms)) if p.lake_lag else "-",
            )
            for p in self.partitions
        ]
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
        text_columns = {0, 6}
        return [
            "  ".join(
                cell.ljust(w) if i in text_columns else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in (header, *body)
        ]

    def render(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        g = self.group

        def member(m: Member | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {"member_id": m.member_id, "client_id": m.client_id, "host": m.host.lstrip("/"), "label": m.label}

        def first(r: FirstRecord | None) -> dict[str, Any] | None:
            return None if r is None else {"offset": r.offset, "timestamp_ms": r.timestamp_ms}

        return {
            "ok": self.exit_code == 0,
            "summary": self.summary(),
            "read_at_ms": self.read_at_ms,
            "group": {
                "group_id": g.group_id,
                "state": g.state,
                "protocol": g.protocol,
                "members": [
                    {**(member(m) or {}), "partitions": [list(tp) for tp in sorted(m.partitions)]} for m in g.members
                ],
            },
            "unowned": [p.where for p in self.unowned],
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "log_start": p.ends.start,
                    "end": p.ends.stable,
                    "high_watermark": p.ends.high,
                    "open_transaction": p.ends.open,
                    "committed": p.committed,
                    "mark": p.mark,
                    "owner": member(p.owner),
                    "consumer_lag": p.consumer_lag,
                    "lake_lag": p.lake_lag,
                    "oldest_waiting": first(p.waiting),
                    "waited_s": p.waited_s(self.read_at_ms),
                    "unowned_with_lag": p.unowned_with_lag,
                }
                for p in self.partitions
            ],
        }
