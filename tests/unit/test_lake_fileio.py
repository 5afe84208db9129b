"""The writer's FileIO remembers the manifests it wrote: the next commit does not read them back from the store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from pyiceberg.io import OutputStream
from pyiceberg.io.pyarrow import PyArrowFile, PyArrowFileIO

from k2.lake.arrow import events_to_arrow
from k2.lake.fileio import Remembered, RememberingFileIO
from k2.lake.schemas import TRADES
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import TOPICS, sqlite_catalog, trade_events


def offsets_of(events: list[Any]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for e in events:
        out[(e.topic, e.partition)] = max(e.offset, out.get((e.topic, e.partition), -1))
    return out


@pytest.fixture
def store_calls(monkeypatch: Any) -> Counter[str]:
    """What reaches the store for Avro files: reads (``new_input``) and sizes asked (``len`` of a file)."""
    calls: Counter[str] = Counter()
    new_input, length = PyArrowFileIO.new_input, PyArrowFile.__len__

    def counted_input(self: PyArrowFileIO, location: str) -> Any:
        if location.endswith(".avro"):
            calls["read"] += 1
        return new_input(self, location)

    def counted_len(self: PyArrowFile) -> int:
        if self.location.endswith(".avro"):
            calls["size"] += 1
        return length(self)

    monkeypatch.setattr(PyArrowFileIO, "new_input", counted_input)
    monkeypatch.setattr(PyArrowFile, "__len__", counted_len)
    return calls


def commit(writer: IcebergWriter, first: int, n: int = 10, partition: int = 0) -> None:
    events = trade_events(partition, range(first, first + n))
    writer.commit(TRADES, events_to_arrow(TRADES, events), offsets_of(events), f"c{partition}-{first}")


def test_the_writers_commits_read_nothing_back_that_it_wrote(tmp_path: Path, store_calls: Counter[str]) -> None:
    """Issue 19: each commit read the parent's manifest list back (a HEAD and a GET on S3), each merge
    the manifests of its bin, and each manifest's size was asked of the store (a HEAD)."""
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    writer = IcebergWriter(catalog, TOPICS, "w", sleep=lambda _: None)
    commit(writer, 0)
    store_calls.clear()

    for i in range(1, 12):  # merges included: K2's tables merge manifests from 4
        commit(writer, i * 10)

    assert store_calls == Counter()
    table = writer.table(TRADES, refresh=True)
    assert sorted(r["kafka_offset"] for r in table.scan().to_arrow().to_pylist()) == list(range(120))
    assert len(table.current_snapshot().manifests(table.io)) < 12  # merged: the merges read from memory


def test_what_is_remembered_is_what_the_store_holds(tmp_path: Path) -> None:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    writer = IcebergWriter(catalog, TOPICS, "w", sleep=lambda _: None)
    for i in range(6):
        commit(writer, i * 10)
    memory = writer.remembered
    assert len(memory) >= 12  # a manifest and a manifest list per commit at least
    checked = 0
    for path in (tmp_path / "warehouse").rglob("*.avro"):
        held = memory.get(path.as_uri())
        if held is not None:
            assert held == path.read_bytes()
            checked += 1
    assert checked == len(memory)


def test_another_writers_files_are_read_from_the_store(tmp_path: Path, store_calls: Counter[str]) -> None:
    catalog_a, catalog_b = sqlite_catalog(tmp_path), sqlite_catalog(tmp_path)
    ensure_tables(catalog_a)
    a = IcebergWriter(catalog_a, TOPICS, "a", sleep=lambda _: None)
    b = IcebergWriter(catalog_b, TOPICS, "b", sleep=lambda _: None)
    commit(a, 0)
    commit(b, 0, partition=1)
    store_calls.clear()

    commit(a, 10)

    assert store_calls["read"] >= 1  # b's manifest list, which a never wrote
    table = a.table(TRADES, refresh=True)
    assert sorted((r["kafka_partition"], r["kafka_offset"]) for r in table.scan().to_arrow().to_pylist()) == [
        *((0, o) for o in range(20)),
        *((1, o) for o in range(10)),
    ]


def test_memory_keeps_the_newest_files_within_its_bound() -> None:
    memory = Remembered(max_bytes=10)
    memory.put("a", b"1234")
    memory.put("b", b"5678")
    assert memory.get("a") == b"1234"  # read: now the newest
    memory.put("c", b"90ab")
    assert (memory.get("b"), memory.get("a"), memory.get("c")) == (None, b"1234", b"90ab")
    assert memory.size_bytes == 8
    memory.put("huge", b"x" * 11)
    assert memory.get("huge") is None and len(memory) == 2
    memory.forget("a")
    assert memory.get("a") is None and memory.size_bytes == 4
    memory.clear()
    assert (len(memory), memory.size_bytes) == (0, 0)


class _FailingStream:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)

    def tell(self) -> int:
        return len(self.data)

    def close(self) -> None:
        raise OSError("upload failed")

    def __enter__(self) -> _FailingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_a_file_whose_upload_failed_is_not_remembered_and_a_deleted_one_is_forgotten(tmp_path: Path) -> None:
    memory = Remembered()
    fileio = RememberingFileIO(PyArrowFileIO(), memory)
    kept = (tmp_path / "kept.avro").as_uri()
    with fileio.new_output(kept).create() as out:
        out.write(b"avro bytes")
    assert memory.get(kept) == b"avro bytes" and len(fileio.new_output(kept)) == len(b"avro bytes")
    assert fileio.new_input(kept).open().read() == b"avro bytes"

    failing = fileio.new_output((tmp_path / "lost.avro").as_uri())
    failing._inner.create = lambda overwrite=False: _FailingStream()  # type: ignore[attr-defined]
    stream: OutputStream = failing.create()
    stream.write(b"half")
    with pytest.raises(OSError, match="upload failed"):
        stream.close()
    assert memory.get(failing.location) is None

    fileio.delete(kept)
    assert memory.get(kept) is None and not Path(urlparse(kept).path).exists()
    data = (tmp_path / "data.parquet").as_uri()
    with fileio.new_output(data).create() as out:
        out.write(b"parquet")
    assert memory.get(data) is None  # data files go to the store only
