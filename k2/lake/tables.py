"""Create K2's namespaces and tables when missing; load them otherwise.

Idempotent and race-safe: an existing table is loaded, never re-created (so a
second run writes no metadata file), and when two workers start together the loser
of a create race catches ``TableAlreadyExistsError`` and loads the winner's table.
Existing tables are checked against :mod:`k2.lake.schemas` so a drifted lake fails
at start-up with one clear error instead of at the first commit, and the properties
exactly-once depends on (:data:`~k2.lake.schemas.REQUIRED_PROPERTIES`) are set on
them if missing, as are the streaming ones (:data:`~k2.lake.schemas.STREAMING_PROPERTIES`)
the table does not set itself: one metadata change the first time, none after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import IcebergType, ListType, NestedField, StructType

from k2.errors import TableSchemaMismatch
from k2.lake.schemas import REQUIRED_PROPERTIES, STREAMING_PROPERTIES, TABLES, TableDef

__all__ = ["ensure_table", "ensure_tables", "missing_optional_columns", "missing_properties", "schema_problems"]


def _same_type(a: IcebergType, b: IcebergType) -> bool:
    """Equal types, nested field ids aside (a column added to an existing table gets ids of its own)."""
    if isinstance(a, ListType) and isinstance(b, ListType):
        return a.element_required == b.element_required and _same_type(a.element_type, b.element_type)
    if isinstance(a, StructType) and isinstance(b, StructType):
        return len(a.fields) == len(b.fields) and all(
            x.name == y.name and x.required == y.required and _same_type(x.field_type, y.field_type)
            for x, y in zip(a.fields, b.fields, strict=True)
        )
    return a == b


def missing_optional_columns(expected: Schema, actual: Schema) -> list[NestedField]:
    """Optional columns of ``expected`` that ``actual`` lacks: added to an existing table (a newer K2 version)."""
    names = {f.name for f in actual.fields}
    return [f for f in expected.fields if not f.required and f.name not in names]


def schema_problems(expected: Schema, actual: Schema) -> list[str]:
    """What in ``actual`` breaks the columns K2 writes (``expected``); extra columns are fine."""
    problems = []
    for want in expected.fields:
        try:
            got = actual.find_field(want.name)
        except ValueError:
            problems.append(f"missing column {want.name}")
            continue
        if not _same_type(got.field_type, want.field_type):
            problems.append(f"column {want.name} is {got.field_type}, expected {want.field_type}")
        elif want.required != got.required:
            problems.append(f"column {want.name} is {'required' if got.required else 'optional'}")
    return problems


def missing_properties(table: Table) -> dict[str, str]:
    """The :data:`~k2.lake.schemas.REQUIRED_PROPERTIES` that ``table`` lacks or sets otherwise, and the
    :data:`~k2.lake.schemas.STREAMING_PROPERTIES` it does not set at all."""
    absent = {k: v for k, v in STREAMING_PROPERTIES.items() if k not in table.properties}
    return absent | {k: v for k, v in REQUIRED_PROPERTIES.items() if table.properties.get(k) != v}


def _enforce_properties(table: Table) -> None:
    for _ in range(5):
        missing = missing_properties(table)
        if not missing:
            return
        try:
            with table.transaction() as tx:
                tx.set_properties(missing)
            return
        except CommitFailedException:
            table.refresh()
    raise CommitFailedException(f"could not set {sorted(missing)} on {table.name()}: too many conflicts")


def ensure_table(catalog: Catalog, table_def: TableDef) -> tuple[Table, bool]:
    """Load ``table_def.name``, creating it (and its namespace) if missing; True if this call created it."""
    created = False
    try:
        table = catalog.load_table(table_def.name)
    except NoSuchTableError:
        if not catalog.namespace_exists(table_def.namespace):
            with contextlib.suppress(NamespaceAlreadyExistsError):
                catalog.create_namespace(table_def.namespace)
        try:
            table = catalog.create_table(
                table_def.name,
                schema=table_def.schema,
                partition_spec=table_def.partition_spec,
                sort_order=table_def.sort_order,
                properties=dict(table_def.properties),
            )
            created = True
        except TableAlreadyExistsError:  # another worker won the race
            table = catalog.load_table(table_def.name)
    table = _add_missing_optional(table, table_def)
    problems = schema_problems(table_def.schema, table.schema())
    if problems:
        raise TableSchemaMismatch(f"table {table_def.name} does not match K2's schema: {'; '.join(problems)}")
    _enforce_properties(table)
    return table, created


def _add_missing_optional(table: Table, table_def: TableDef) -> Table:
    """Add the optional columns a newer K2 defines and the table lacks (once; racing workers are fine)."""
    for _ in range(5):
        missing = missing_optional_columns(table_def.schema, table.schema())
        if not missing:
            return table
        try:
            with table.update_schema() as update:
                update.union_by_name(Schema(*missing))
        except CommitFailedException:
            pass
        table.refresh()
    raise CommitFailedException(f"could not add {[f.name for f in missing]} to {table.name()}: too many conflicts")


def ensure_tables(catalog: Catalog, table_defs: Iterable[TableDef] | None = None) -> dict[str, Table]:
    """Every K2 table (by default all of :data:`k2.lake.schemas.TABLES`), created if missing.

    Blocking catalog I/O: call it at start-up, or through ``asyncio.to_thread``.
    """
    return {d.name: ensure_table(catalog, d)[0] for d in (TABLES.values() if table_defs is None else table_defs)}
