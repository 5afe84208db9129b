"""Rejects sent back to their source: once each, even when a run dies half way (SQLite catalog, fake Kafka)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.lake.arrow import rejects_to_arrow
from k2.lake.redrive import REDRIVE_HEADER, Selection, decode_position, linked, redrive
from k2.lake.schemas import REJECTS
from k2.lake.tables import ensure_tables
from k2.lake.writer import IcebergWriter

from .lake_helpers import QUOTES_TOPIC, TOPICS, TRADES_TOPIC, reject, sqlite_catalog


class FakeKafka:
    """A log per (topic, partition), appended to by produce; optionally failing at flush."""

    def __init__(self) -> None:
        self.log: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]] = {}
        self.fail_flush = False

    def produce(self, topic: str, partition: int, key: Any, value: Any, headers: list[tuple[str, bytes]]) -> Any:
        records = self.log.setdefault((topic, partition), [])
        records.append((key, value, headers))
        at = (partition, 1000 + len(records) - 1)
        return lambda: at

    def flush(self) -> None:
        if self.fail_flush:
            raise RuntimeError("the worker died")

    def end_offsets(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: 1000 + len(self.log.get(tp, [])) for tp in partitions}

    def read_headers(self, starts: Mapping[tuple[str, int], int]) -> Iterator[tuple[str, int, int, Any]]:
        for (topic, partition), start in starts.items():
            for i, (_, _, headers) in enumerate(self.log.get((topic, partition), [])):
                if 1000 + i >= start:
                    yield topic, partition, 1000 + i, headers

    def run(self, catalog: SqlCatalog, selection: Selection | None = None, send: bool = True) -> Any:
        return redrive(
            catalog,
            selection or Selection(),
            send=send,
            produce=self.produce,
            flush=self.flush,
            end_offsets=self.end_offsets,
            read_headers=self.read_headers,
        )

    def sent(self) -> int:
        return sum(len(v) for v in self.log.values())


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = sqlite_catalog(tmp_path)
    ensure_tables(catalog)
    writer = IcebergWriter(catalog, TOPICS, "w:1")
    rejects = [
        reject(TRADES_TOPIC, 0, 5, reason="unknown_schema_id", value=b"v5", key=b"BHP", headers=(("trace", b"t5"),)),
        reject(TRADES_TOPIC, 0, 9, reason="invalid_value", value=b"v9", key=b"BHP"),
        reject(QUOTES_TOPIC, 2, 3, reason="unknown_schema_id", value=b"q3", key=b"DVN"),
    ]
    writer.commit(REJECTS, rejects_to_arrow(rejects), {}, "c1")
    return catalog


def test_a_dry_run_says_what_would_be_sent_and_sends_nothing(catalog: SqlCatalog) -> None:
    kafka = FakeKafka()
    result = kafka.run(catalog, Selection(reasons=("unknown_schema_id",)), send=False)
    assert (result.selected, result.sent) == (2, 0)
    assert result.by_topic_reason == {(TRADES_TOPIC, "unknown_schema_id"): 1, (QUOTES_TOPIC, "unknown_schema_id"): 1}
    assert kafka.sent() == 0 and linked(catalog) == {}


def test_rejects_go_back_as_they_came_once_and_a_second_run_sends_nothing(catalog: SqlCatalog) -> None:
    kafka = FakeKafka()
    result = kafka.run(catalog, Selection(topic=TRADES_TOPIC))
    assert (result.selected, result.sent) == (2, 2)
    [(key, value, headers), _] = kafka.log[(TRADES_TOPIC, 0)]
    assert (key, value) == (b"BHP", b"v5")
    assert headers == [("trace", b"t5"), (REDRIVE_HEADER, f"{TRADES_TOPIC}/0/5".encode())]
    assert decode_position(headers[-1][1]) == (TRADES_TOPIC, 0, 5)
    assert linked(catalog) == {(TRADES_TOPIC, 0, 5): (0, 1000), (TRADES_TOPIC, 0, 9): (0, 1001)}
    again = kafka.run(catalog, Selection(topic=TRADES_TOPIC))
    assert (again.selected, again.already, again.sent) == (2, 2, 0) and kafka.sent() == 2


def test_a_run_that_died_after_sending_is_completed_not_repeated(catalog: SqlCatalog) -> None:
    kafka = FakeKafka()
    kafka.fail_flush = True
    with pytest.raises(RuntimeError, match="died"):
        kafka.run(catalog)
    assert kafka.sent() == 3 and linked(catalog) == {}
    kafka.fail_flush = False
    result = kafka.run(catalog)
    assert (result.recovered, result.already, result.sent) == (3, 3, 0)
    assert kafka.sent() == 3  # nothing twice
    assert len(linked(catalog)) == 3
