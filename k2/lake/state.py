"""What a worker knows of the lake, per table, in one place: forgotten together when the table goes back.

For each K2 table: the loaded table (its metadata), its Arrow schema, the writer schema ids
whose columns it has, and the highest offset marks read or committed. All four describe the
same table; when it is dropped and created again, or rolled back, they are wrong together,
so :meth:`LakeState.forget` drops them together, and the next use reads them afresh (and a
recreated table gets the columns of the writer schemas it sees again: none is dropped).

Only :class:`~k2.lake.writer.IcebergWriter` changes the tables and the marks (under its
per-table locks, from worker threads); :class:`~k2.ingest.processor.LakeSchemas` records the
writer schemas applied (on the event loop, after the evolution's commit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from k2.lake.offsets import merge_offsets
from k2.lake.records import TopicPartition
from k2.lake.schemas import TABLES

__all__ = ["LakeState", "TableState"]


@dataclass
class TableState:
    """One table as this worker knows it."""

    table: Table | None = None
    """The table as last loaded or refreshed (None: not loaded yet)."""
    applied: set[int] = field(default_factory=set)
    """Writer schema ids whose columns the table has (added by this worker or found there)."""
    marks: dict[TopicPartition, int] = field(default_factory=dict)
    """The highest marks read or committed: the table never records less, unless it went back."""
    head: int | None = None
    """The snapshot this worker's last commit made, while ``table`` holds the metadata that commit returned."""
    other_seen: float = float("-inf")
    """When (``time.monotonic``) a refresh last showed another writer's commit."""
    _arrow: pa.Schema | None = None
    _arrow_of: int | None = None

    def trusted(self, now: float, hold_s: float) -> bool:
        """Whether a commit may build on ``table`` as loaded, without reading it from the catalog first.

        Only while it is as this worker's own last commit left it and no other writer was seen for
        ``hold_s`` seconds: the catalog refuses a commit whose table moved on meanwhile (pyiceberg's
        ``AssertRefSnapshotId`` and ``AssertTableUUID``), so a stale table costs one refused
        attempt, never a wrong mark.
        """
        return (
            self.table is not None
            and self.head is not None
            and self.table.metadata.current_snapshot_id == self.head
            and now - self.other_seen >= hold_s
        )

    def arrow_schema(self) -> pa.Schema:
        """The loaded table's Arrow schema (computed once per Iceberg schema id)."""
        if self.table is None:
            raise RuntimeError("the table is not loaded")
        schema = self.table.schema()
        if self._arrow is None or self._arrow_of != schema.schema_id:
            self._arrow = schema_to_pyarrow(schema, include_field_ids=False)
            self._arrow_of = schema.schema_id
        return self._arrow


class LakeState:
    """Every K2 table's :class:`TableState`."""

    def __init__(self) -> None:
        self._tables = {name: TableState() for name in TABLES}

    def of(self, table_name: str) -> TableState:
        return self._tables[table_name]

    def marks(self) -> dict[TopicPartition, int]:
        """How far the lake got per source partition, as last read or committed: the highest mark of any table."""
        out: dict[TopicPartition, int] = {}
        for state in self._tables.values():
            out = merge_offsets(out, state.marks)
        return out

    def forget(self, table_name: str | None = None) -> None:
        """Forget one table (or all): its metadata, schema, applied writer schemas and marks are read again."""
        for name in [table_name] if table_name is not None else list(self._tables):
            self._tables[name] = TableState()
