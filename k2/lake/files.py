"""The data files K2 writes, each saying whether its rows are in the table's sort order.

An engine that knows a file is sorted can merge instead of sorting, and skip within the file;
it knows from the file's ``sort_order_id`` (null: unknown order). pyiceberg 0.12 writes every
data file with it null: ``write_file`` ignores ``WriteTask.sort_order_id``
(apache/iceberg-python#271). So files are written here as pyiceberg's ``Transaction.append``
writes them, by its private ``_dataframe_to_data_files`` (the files are cut by partition, then by
``write.target-file-size-bytes``), and each is given the table's sort order id when the rows are
verifiably in that order, null otherwise. A file holds a subsequence of the rows it was cut from,
in their order, so rows in order give files in order. The private names used here
(``_dataframe_to_data_files``, ``_check_pyarrow_schema_compatible``) are pinned by
``tests/unit/test_lake_files.py``, as is the bug: when pyiceberg fixes it, go back to
``Table.append``.

Blocking file and catalog I/O: run it in a thread.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files
from pyiceberg.manifest import DATA_FILE_TYPE, DEFAULT_READ_VERSION, DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.sorting import NullOrder, SortDirection
from pyiceberg.transforms import IdentityTransform
from pyiceberg.utils.properties import property_as_bool

from k2.lake.laps import Laps
from k2.lake.txn import transaction

__all__ = ["Written", "append", "sort_order_id", "write_data_files"]


def sort_order_id(metadata: TableMetadata, rows: pa.Table) -> int | None:
    """The id of the table's sort order when ``rows`` are in it; None when they are not, or it has none.

    Only orders of plain columns (identity transforms) are checked; any other reads as not sorted.
    """
    order = metadata.sort_order()
    if order.is_unsorted:
        return None
    keys: list[tuple[str, str, str]] = []
    for field in order.fields:
        name = metadata.schema().find_column_name(field.source_id)
        if not isinstance(field.transform, IdentityTransform) or name is None or name not in rows.column_names:
            return None
        direction = "ascending" if field.direction == SortDirection.ASC else "descending"
        keys.append((name, direction, "at_end" if field.null_order == NullOrder.NULLS_LAST else "at_start"))
    if rows.num_rows > 1:
        # Arrow's sort is stable: rows already in order sort to themselves.
        indices = pc.sort_indices(rows.select([k[0] for k in keys]), sort_keys=keys)
        if not np.array_equal(indices.to_numpy(), np.arange(rows.num_rows)):
            return None
    return order.order_id


def write_data_files(
    metadata: TableMetadata, io: FileIO, rows: pa.Table, write_uuid: uuid.UUID | None = None
) -> list[DataFile]:
    """Write ``rows`` as the table's data files (not committed), each with :func:`sort_order_id` of ``rows``."""
    order_id = sort_order_id(metadata, rows)
    files = _dataframe_to_data_files(table_metadata=metadata, df=rows, io=io, write_uuid=write_uuid)
    return [_with_sort_order(f, order_id) for f in files]


class Written:
    """The data files the attempts of one commit wrote, for a retry of the same rows to commit again.

    A commit that loses a conflict to another worker's (other partitions) retries with the same
    rows: the filter only drops rows, so the same count is the same rows. Their files are
    committed again as they are: a retry costs its manifests and the catalog swap, not the
    Parquet files again (and leaves no orphan of the lost attempt).
    """

    def __init__(self) -> None:
        self._rows = -1
        self._spec_id = -1
        self._files: list[DataFile] = []

    def reuse(self, table: Table, rows: pa.Table) -> list[DataFile] | None:
        """The files written for ``rows`` under the table's current partition spec, if any."""
        if rows.num_rows == self._rows and table.metadata.default_spec_id == self._spec_id:
            return list(self._files)
        return None

    def keep(self, table: Table, rows: pa.Table, files: list[DataFile]) -> None:
        self._rows, self._spec_id, self._files = rows.num_rows, table.metadata.default_spec_id, list(files)


def append(
    table: Table,
    rows: pa.Table,
    snapshot_properties: dict[str, str],
    laps: Laps | None = None,
    written: Written | None = None,
) -> None:
    """``table.append(rows, snapshot_properties=...)``, the data files saying whether they are sorted.

    ``written``: shared by the attempts of one commit (see :class:`Written`).

    Through :func:`k2.lake.txn.transaction`: the transaction's metadata is not deep-copied on
    every read, so the commit does not cost more with every snapshot the table keeps. The
    steps' times go to ``laps``: ``write`` (data files), ``manifests`` (manifests and manifest
    list), ``catalog`` (the metadata swap).

    Raises:
        ValueError: ``rows`` do not fit the table's schema (pyiceberg's own check and message).
        CommitFailedException, CommitStateUnknownException: as ``Table.append``.
    """
    laps = laps or Laps()
    with transaction(table) as txn:
        metadata = txn.table_metadata
        _check_pyarrow_schema_compatible(metadata.schema(), rows.schema, format_version=metadata.format_version)
        update = txn.update_snapshot(snapshot_properties=snapshot_properties)
        merge = property_as_bool(
            metadata.properties, TableProperties.MANIFEST_MERGE_ENABLED, TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT
        )
        appending = update.merge_append() if merge else update.fast_append()
        with appending as producer:
            data_files = written.reuse(table, rows) if written is not None else None
            if data_files is None:
                data_files = write_data_files(metadata, table.io, rows, producer.commit_uuid) if rows.num_rows else []
                if written is not None:
                    written.keep(table, rows, data_files)
            for data_file in data_files:
                producer.append_data_file(data_file)
            laps.lap("write")
        laps.lap("manifests")
    laps.lap("catalog")


def _with_sort_order(data_file: DataFile, order_id: int | None) -> DataFile:
    """``data_file`` with ``sort_order_id`` set (a DataFile has no setter: it is built again, field by field)."""
    fields: Iterable[str] = (f.name for f in DATA_FILE_TYPE[DEFAULT_READ_VERSION].fields if f.name != "sort_order_id")
    out = DataFile.from_args(**{name: getattr(data_file, name) for name in fields}, sort_order_id=order_id)
    with contextlib.suppress(AttributeError):  # pyiceberg 0.12's write_file leaves it unset
        out.spec_id = data_file.spec_id
    if len(out) != len(data_file):  # pragma: no cover - pyiceberg now writes another layout: fields would be lost
        raise AssertionError(f"pyiceberg's DataFile layout changed ({len(data_file)} fields): see k2/lake/files.py")
    return out
