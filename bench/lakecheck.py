"""What a system left in its lake, judged from Kafka and the lake alone: exactness, files, freshness.

Generic over K2, Quix and Connect: every one of their tables carries the Kafka
``kafka_partition`` and ``kafka_offset`` of each row (K2's rejects carry ``source_*``), so
:func:`exactness` counts, per source (topic, partition), the offsets below Kafka's end
offset that are no row (missing) and the rows beyond the first of an offset (doubled).
:func:`freshness` joins each row's data file with the snapshot that added it (its commit
time is when the row became visible) and with the record's Kafka CreateTime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from k2.lake.offsets import WORKER_ID_KEY

__all__ = ["Lineage", "commit_stats", "exactness", "file_stats", "freshness", "produced_times", "rows_in"]

Ends = Mapping[tuple[str, int], int]


@dataclass(frozen=True)
class Lineage:
    """Where a table's rows of one source topic say they came from."""

    table: str
    topic: str
    partition_column: str = "kafka_partition"
    offset_column: str = "kafka_offset"
    topic_column: str | None = None
    """When the table holds several topics' rows (K2's rejects): the column naming the topic."""


def _positions(catalog: Catalog, lineage: Lineage) -> pa.Table:
    try:
        table = catalog.load_table(lineage.table)
    except NoSuchTableError:
        return pa.table({"p": pa.array([], pa.int64()), "o": pa.array([], pa.int64())})
    if table.current_snapshot() is None:
        return pa.table({"p": pa.array([], pa.int64()), "o": pa.array([], pa.int64())})
    columns = [lineage.partition_column, lineage.offset_column]
    if lineage.topic_column:
        columns.append(lineage.topic_column)
    data = table.scan(selected_fields=tuple(columns)).to_arrow()
    if lineage.topic_column:
        data = data.filter(pc.equal(data[lineage.topic_column], lineage.topic))
    return pa.table(
        {"p": data[lineage.partition_column].cast(pa.int64()), "o": data[lineage.offset_column].cast(pa.int64())}
    )


def exactness(catalog: Catalog, lineages: Sequence[Lineage], ends: Ends) -> dict[str, int]:
    """Rows, missing offsets and doubled rows over ``lineages``, against Kafka's ``ends``.

    Offsets 0..end-1 of every source partition must each be exactly one row (the topics are
    written by a non-transactional producer and never compacted: every offset is a record).
    """
    by_topic: dict[str, list[pa.Table]] = {}
    for lineage in lineages:
        by_topic.setdefault(lineage.topic, []).append(_positions(catalog, lineage))
    rows = missing = doubled = outside = 0
    for topic, parts in by_topic.items():
        positions = pa.concat_tables(parts)
        rows += positions.num_rows
        counts = positions.group_by(["p", "o"]).aggregate([([], "count_all")])
        doubled += int(pc.sum(pc.subtract(counts["count_all"], 1)).as_py() or 0)
        for (t, partition), end in ends.items():
            if t != topic:
                continue
            mine = counts.filter(pc.equal(counts["p"], partition))["o"]
            inside = int(pc.sum(pc.and_(pc.greater_equal(mine, 0), pc.less(mine, end))).as_py() or 0)
            missing += end - inside
            outside += len(mine) - inside
        known = {p for (t, p) in ends if t == topic}
        stray = counts.filter(pc.invert(pc.is_in(counts["p"], pa.array(sorted(known), pa.int64()))))
        outside += stray.num_rows
    return {"rows": rows, "missing": missing, "doubled": doubled, "outside_kafka": outside}


def rows_in(catalog: Catalog, tables: Sequence[str]) -> int:
    """Rows in the current snapshots (``total-records``: no data file read); 0 for a missing table."""
    total = 0
    for name in tables:
        try:
            snap = catalog.load_table(name).current_snapshot()
        except NoSuchTableError:
            continue
        if snap is not None and snap.summary is not None:
            total += int(snap.summary.additional_properties.get("total-records", "0"))
    return total


def file_stats(catalog: Catalog, tables: Sequence[str]) -> dict[str, float]:
    """Live data files of ``tables`` (every system here only appends: every file it wrote), bytes, snapshots."""
    files = size = snapshots = 0
    for name in tables:
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            continue
        if table.current_snapshot() is None:
            continue
        listing = table.inspect.files()
        listing = listing.filter(pc.equal(listing["content"], 0))
        files += listing.num_rows
        size += int(pc.sum(listing["file_size_in_bytes"]).as_py() or 0)
        snapshots += len(table.snapshots())
    return {
        "data_files": files,
        "data_bytes": size,
        "avg_file_mb": round(size / max(1, files) / 1e6, 3),
        "snapshots": snapshots,
    }


class SnapshotTimes:
    """Commit times of the snapshots of some tables, read every ``interval_s`` while a run goes on.

    A data file keeps the id of the snapshot that added it after that snapshot is expired, but the
    snapshot's commit time goes with it: without these, the rows of expired snapshots (a worker
    expiring by count at a 1 s flush) would drop out of the freshness figures.
    """

    def __init__(self, catalog: Catalog, tables: Sequence[str], interval_s: float = 20.0) -> None:
        self.catalog, self.tables, self.interval_s = catalog, list(tables), interval_s
        self.commit_ms: dict[int, int] = {}
        self.summaries: dict[str, dict[int, tuple[int, dict[str, str]]]] = {name: {} for name in self.tables}
        """Per table, per snapshot id: (commit time, operation and summary properties)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-times", daemon=True)

    def __enter__(self) -> SnapshotTimes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.read()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read()

    def read(self) -> None:
        for name in self.tables:
            try:
                table = self.catalog.load_table(name)
            except Exception:  # not created yet, or the catalog is busy: the next read
                continue
            for snap in table.snapshots():
                self.commit_ms[snap.snapshot_id] = snap.timestamp_ms
                summary = snap.summary
                props = {"operation": summary.operation.value, **summary.additional_properties} if summary else {}
                self.summaries[name][snap.snapshot_id] = (snap.timestamp_ms, props)


def visible_times(catalog: Catalog, lineage: Lineage, known: Mapping[int, int] | None = None) -> pa.Table:
    """(p, o, visible_ms) of every row: the commit time of the snapshot that added its data file.

    ``known``: commit times of snapshots read earlier (:class:`SnapshotTimes`), expired since.
    """
    empty = pa.table(
        {"p": pa.array([], pa.int64()), "o": pa.array([], pa.int64()), "visible_ms": pa.array([], pa.int64())}
    )
    try:
        table = catalog.load_table(lineage.table)
    except NoSuchTableError:
        return empty
    if table.current_snapshot() is None:
        return empty
    commit_ms = dict(known or {}) | {s.snapshot_id: s.timestamp_ms for s in table.snapshots()}
    entries = table.inspect.entries()
    out = []
    for status, snapshot_id, data_file in zip(
        entries["status"].to_pylist(),
        entries["snapshot_id"].to_pylist(),
        entries["data_file"].to_pylist(),
        strict=True,
    ):
        if status == 2 or data_file["content"] != 0 or snapshot_id not in commit_ms:
            continue
        with table.io.new_input(data_file["file_path"]).open() as stream:  # a local file or an object store's
            data = pq.read_table(stream, columns=[lineage.partition_column, lineage.offset_column])
        out.append(
            pa.table(
                {
                    "p": data[lineage.partition_column].cast(pa.int64()),
                    "o": data[lineage.offset_column].cast(pa.int64()),
                    "visible_ms": pa.repeat(pa.scalar(commit_ms[snapshot_id], pa.int64()), data.num_rows),
                }
            )
        )
    return pa.concat_tables(out) if out else empty


def produced_times(broker: str, ends: Ends, timeout_s: float = 120.0) -> pa.Table:
    """(topic, p, o, produced_ms): Kafka's record timestamp (CreateTime) of every offset below ``ends``."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "bench-produced-times",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    topics: list[str] = []
    parts: list[int] = []
    offsets: list[int] = []
    stamps: list[int] = []
    left = {tp: end for tp, end in ends.items() if end > 0}
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(t, p, 0) for (t, p) in left])
        while left:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading record timestamps: {len(left)} partitions unread after {timeout_s:.0f}s")
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                if msg.error():
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is None or partition is None or offset is None:
                    continue
                end = left.get((topic, partition))
                if end is None or offset >= end:
                    continue
                topics.append(topic)
                parts.append(partition)
                offsets.append(offset)
                stamps.append(msg.timestamp()[1])
                if offset == end - 1:
                    del left[(topic, partition)]
    finally:
        consumer.close()
    return pa.table(
        {
            "topic": pa.array(topics, pa.string()),
            "p": pa.array(parts, pa.int64()),
            "o": pa.array(offsets, pa.int64()),
            "produced_ms": pa.array(stamps, pa.int64()),
        }
    )


def freshness(
    catalog: Catalog,
    lineages: Sequence[Lineage],
    produced: pa.Table,
    since_ms: int,
    slices: int = 5,
    known: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """Produced -> visible latency (s) of every row produced at or after ``since_ms``: p50, p99, max, n.

    ``p99_by_slice_s``: the p99 of the rows produced in each of ``slices`` equal spans of time, in
    order: whether freshness holds as the run goes on (commits that cost more with history would
    show as a p99 that grows from slice to slice).
    """
    latencies, made_at = [], []
    for lineage in lineages:
        rows = visible_times(catalog, lineage, known)
        if rows.num_rows == 0:
            continue
        # A row landed twice counts from when it first became visible.
        first = rows.group_by(["p", "o"]).aggregate([("visible_ms", "min")])
        made = produced.filter(pc.equal(produced["topic"], lineage.topic)).drop_columns(["topic"])
        joined = first.join(made, keys=["p", "o"], join_type="inner")
        joined = joined.filter(pc.greater_equal(joined["produced_ms"], since_ms))
        latencies.append(pc.subtract(joined["visible_ms_min"], joined["produced_ms"]).combine_chunks())
        made_at.append(joined["produced_ms"].combine_chunks())
    values = pa.concat_arrays(latencies) if latencies else pa.array([], pa.int64())
    if len(values) == 0:
        return {"p50_s": None, "p99_s": None, "max_s": None, "n": 0, "p99_by_slice_s": []}
    seconds = pc.divide(values.cast(pa.float64()), 1000.0)
    p50, p99 = pc.quantile(seconds, q=[0.5, 0.99]).to_pylist()
    return {
        "p50_s": round(p50, 2),
        "p99_s": round(p99, 2),
        "max_s": round(pc.max(seconds).as_py(), 2),
        "n": len(values),
        "p99_by_slice_s": _p99_by_slice(seconds, pa.concat_arrays(made_at), slices),
    }


def _p99_by_slice(seconds: pa.Array, made_ms: pa.Array, slices: int) -> list[float | None]:
    start, end = pc.min(made_ms).as_py(), pc.max(made_ms).as_py()
    width = max(1, end - start + 1) / slices
    out: list[float | None] = []
    for i in range(slices):
        low, high = start + i * width, start + (i + 1) * width
        mask = pc.and_(pc.greater_equal(made_ms, low), pc.less(made_ms, high))
        part = seconds.filter(mask)
        out.append(round(pc.quantile(part, q=0.99).to_pylist()[0], 2) if len(part) else None)
    return out


def commit_stats(
    snapshots: Mapping[str, Sequence[tuple[int, Mapping[str, str]]]], t0_ms: int, t1_ms: int
) -> dict[str, dict[str, Any]]:
    """Per table, of its snapshots committed in [t0, t1] (``(timestamp_ms, summary)``): counts, per minute, workers."""
    minutes = max(1e-9, (t1_ms - t0_ms) / 60_000)
    out = {}
    for table, snaps in snapshots.items():
        inside = [(ts, s) for ts, s in snaps if t0_ms <= ts <= t1_ms and s.get("operation", "append") == "append"]
        files = sum(int(s.get("added-data-files", 0)) for _, s in inside)
        size = sum(int(s.get("added-files-size", 0)) for _, s in inside)
        by_worker: dict[str, int] = {}
        for _, s in inside:
            worker = s.get(WORKER_ID_KEY, "?")
            by_worker[worker] = by_worker.get(worker, 0) + 1
        out[table] = {
            "snapshots": len(inside),
            "snapshots_per_min": round(len(inside) / minutes, 1),
            "data_files": files,
            "data_files_per_min": round(files / minutes, 1),
            "avg_file_kb": round(size / max(1, files) / 1024, 1),
            "committing_workers": len(by_worker),
        }
    return out
