"""Read what the audit needs from the lake: lineage columns and marks, from one snapshot per table.

Only the Kafka-position columns are scanned (``selected_fields``), so Parquet reads a few
narrow column chunks per file whatever the table's width. The marks come from the same
metadata the scan is pinned to (the newest K2 commit at or before the scanned snapshot):
rows and marks of one table are then one consistent state, and "a row above its own
table's mark" means the commit itself was wrong, never that the reader raced a writer.
Tables are read one after the other, so *across* tables the states may differ by a
flush; the audit's ``--settle`` re-read is there for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2.errors import LakeCorrupt, ServiceUnavailable
from k2.lake.offsets import read_offsets
from k2.lake.records import TopicPartition
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, TABLES

__all__ = ["PARTITION", "LakeRead", "TableLineage", "read_lake", "read_table"]

PARTITION = "partition"
OFFSET = "offset"
COMPANY_ID = "company_id"


@dataclass(frozen=True)
class TableLineage:
    """One table as the audit sees it: where its rows came from, and what its snapshot claims."""

    name: str
    exists: bool = True
    snapshot_id: int | None = None
    marks: Mapping[TopicPartition, int] = field(default_factory=dict)
    by_topic: Mapping[str, pa.Table] = field(default_factory=dict)
    """Per source topic: ``partition`` (int32) and ``offset`` (int64) of each row, plus
    ``company_id`` for the company tables."""

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.by_topic.values())


@dataclass(frozen=True)
class LakeRead:
    """Every audited table, each read at one snapshot."""

    tables: Mapping[str, TableLineage]

    def marks(self) -> dict[TopicPartition, int]:
        """The lake's mark per source partition: the highest offset any table records for it."""
        out: dict[TopicPartition, int] = {}
        for t in self.tables.values():
            for tp, offset in t.marks.items():
                if offset > out.get(tp, -1):
                    out[tp] = offset
        return out

    def rows(self, table: str, topic: str) -> pa.Table | None:
        t = self.tables.get(table)
        return None if t is None else t.by_topic.get(topic)


def _columns(name: str) -> tuple[str | None, str, str, tuple[str, ...]]:
    pos = TABLES[name].position
    extra = (COMPANY_ID,) if name in (COMPANIES, COMPANY_VERSIONS) else ()
    return pos.topic_column, pos.partition_column, pos.offset_column, extra


def _normalise(data: pa.Table, partition_col: str, offset_col: str, extra: tuple[str, ...]) -> pa.Table:
    columns = {
        PARTITION: data[partition_col].cast(pa.int32()),
        OFFSET: data[offset_col].cast(pa.int64()),
        **{c: data[c] for c in extra},
    }
    return pa.table(columns)


def _split_topics(data: pa.Table, topic_col: str, partition_col: str, offset_col: str) -> dict[str, pa.Table]:
    """Rows per source topic of a table fed by several (one pass per distinct topic; there are few)."""
    if data.num_rows == 0:
        return {}
    topics = data[topic_col]
    return {
        str(topic): _normalise(data.filter(pc.equal(topics, topic)), partition_col, offset_col, ())
        for topic in pc.unique(topics).to_pylist()
    }


def read_table(table: Table, name: str, topic: str | None) -> TableLineage:
    """The lineage of ``table``'s current snapshot and the marks recorded at it.

    Args:
        name: the K2 table it is (``market_data.trades``...), which says its lineage columns.
        topic: the source topic of every row, for tables fed by one topic; None for
            tables that record it per row (rejects, sequence gaps).

    Raises:
        LakeCorrupt: a ``k2.offsets.*`` key in the snapshot summary is malformed.
    """
    topic_col, partition_col, offset_col, extra = _columns(name)
    metadata = table.metadata
    snapshot = metadata.current_snapshot()
    try:
        marks = read_offsets(table)  # reads the same metadata object: the scanned snapshot's history
    except ValueError as exc:
        raise LakeCorrupt(f"{name}: {exc}; the lake's bookkeeping was edited by hand?") from exc
    if snapshot is None:
        return TableLineage(name, snapshot_id=None, marks=marks)
    fields = tuple(c for c in (topic_col, partition_col, offset_col, *extra) if c is not None)
    data = table.scan(selected_fields=fields, snapshot_id=snapshot.snapshot_id).to_arrow()
    if topic_col is not None:
        by_topic = _split_topics(data, topic_col, partition_col, offset_col)
    elif topic is None:
        raise ValueError(f"{name} records no topic per row: pass the topic that feeds it")
    else:
        by_topic = {topic: _normalise(data, partition_col, offset_col, extra)} if data.num_rows else {}
    return TableLineage(name, snapshot_id=snapshot.snapshot_id, marks=marks, by_topic=by_topic)


def read_lake(catalog: Catalog, topics: Mapping[str, str | None]) -> LakeRead:
    """Read every table of ``topics`` (table name -> its source topic, None if it records one per row).

    A table that does not exist reads as an absent, empty table (the audit says so).

    Raises:
        ServiceUnavailable: the catalog or its storage cannot be reached.
        LakeCorrupt: a table's bookkeeping cannot be parsed.
    """
    for name, topic in topics.items():
        if topic is None and TABLES[name].position.topic_column is None:
            raise ValueError(f"{name} records no topic per row: pass the topic that feeds it")
    tables: dict[str, TableLineage] = {}
    for name, topic in topics.items():
        try:
            tables[name] = read_table(catalog.load_table(name), name, topic)
        except NoSuchTableError:
            tables[name] = TableLineage(name, exists=False)
        except LakeCorrupt:
            raise
        except Exception as exc:  # pyiceberg, fsspec, pyarrow and SQL drivers raise their own: one typed error
            raise ServiceUnavailable(
                f"cannot read {name} from Iceberg catalog {catalog.name!r}: {type(exc).__name__}: {exc}. "
                "Is the catalog (and its storage) reachable? See README, Configuration."
            ) from exc
    return LakeRead(tables)
