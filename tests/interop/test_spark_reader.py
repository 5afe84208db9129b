"""Apache Spark with the Java Iceberg runtime reads K2's lake as pyiceberg does, and can follow it.

Every K2 table is read by both readers, before and after ``k2 maintain``: rows, every value
of every column (decimals at their scale, instants in UTC, bytes as bytes, nulls), the
schema as each reader types it, the ``snapshots`` (K2's offset marks are in their
summaries), ``history`` and ``files`` metadata tables, and time travel to a few snapshots.
Then the followed tables are read the ways a consumer of a streaming lake reads one, across
the compaction: a Structured Streaming query (Trigger.AvailableNow, one checkpoint) and an
incremental append read from the snapshot before the compaction. Each must deliver every
row exactly once, and no snapshot after the compaction may have lost a row.

The tests of a module run in file order on the same lake (a module-scoped fixture): the
first reads it as laid down, and the others call :meth:`Lake.compact`, which runs
``k2 maintain`` once, between the followers' first and second reads.
"""

from __future__ import annotations

import pytest

from k2.lake.offsets import OFFSET_KEY_PREFIX
from k2.lake.schemas import TRADES
from tests.interop.compare import exactly_once, summary_keys
from tests.interop.lake import Lake

pytestmark = pytest.mark.integration


def test_spark_reads_every_table_as_pyiceberg_does(lake: Lake) -> None:
    assert lake.maintained is None, "this test reads the lake before k2 maintain: run the module in file order"
    reading = lake.compare()
    print(f"\n{lake.env.catalog_kind}, before k2 maintain: {reading.line()}")
    assert not reading.problems, "\n".join(reading.problems)
    marks = summary_keys(lake.spark_read(f"SELECT * FROM {lake.ident(TRADES)}.snapshots"), OFFSET_KEY_PREFIX)
    assert marks and all(marks.values()), f"Spark sees K2's offset marks in every trades snapshot: {marks}"


def test_spark_reads_every_table_as_pyiceberg_does_after_k2_maintain(lake: Lake) -> None:
    lake.compact()
    # Time travel also to every snapshot the compaction committed, and to the one before it.
    travel = {name: [*lake.maintenance_snapshots(name)] for name in lake.followers}
    for name, snapshot_id in lake.before_compaction.items():
        travel[name].append(snapshot_id)
    reading = lake.compare(travel)
    print(f"\n{lake.env.catalog_kind}, after k2 maintain: {reading.line()}")
    assert not reading.problems, "\n".join(reading.problems)


def test_a_spark_stream_delivers_every_row_once_across_compaction(lake: Lake) -> None:
    lake.compact()
    problems = []
    for name, follower in lake.followers.items():
        try:
            follower.catch_up()
        except Exception as exc:  # pyspark's StreamingQueryException: the message is Iceberg's reason
            reason = str(exc).splitlines()[0]
            problems.append(f"{name}: the stream stopped at the first read after k2 maintain: {reason}")
            continue
        problems += exactly_once(name, follower.delivered(), lake.positions(name))
    assert not problems, "\n".join(problems)


def test_an_incremental_read_across_compaction_delivers_only_the_new_rows(lake: Lake) -> None:
    lake.compact()
    problems = []
    for name, start in lake.before_compaction.items():
        end = lake.table(name).current_snapshot()
        assert end is not None
        delivered = lake.incremental(name, start, end.snapshot_id)
        before = lake.positions(name, start)
        now = lake.positions(name)
        seen = set(zip(*(before.column(c).to_pylist() for c in before.column_names), strict=True))
        mask = [p not in seen for p in zip(*(now.column(c).to_pylist() for c in now.column_names), strict=True)]
        new = now.filter(mask)
        assert new.num_rows > 0, f"rows landed in {name} after k2 maintain"
        problems += exactly_once(f"{name} from {start}", delivered, new)
    assert not problems, "\n".join(problems)


def test_no_snapshot_after_compaction_loses_or_doubles_a_row(lake: Lake) -> None:
    """Time travel to any snapshot since the compaction started sees every row it had before, once."""
    lake.compact()
    problems = []
    for name, start in lake.before_compaction.items():
        before = lake.positions(name, start)
        for snapshot_id in lake.snapshots_since(name, start):
            then = lake.spark_positions(name, snapshot_id)
            operation = lake.table(name).snapshot_by_id(snapshot_id)
            what = operation.summary.operation.value if operation and operation.summary else "?"
            problems += exactly_once(f"{name}@{snapshot_id} ({what})", then, before, more_allowed=True)
    assert not problems, "\n".join(problems)
