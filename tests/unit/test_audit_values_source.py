"""The value audit's Kafka reader (k2/audit/values_source.py) over a fake consumer: spans in order continue one
fetch, a span ending at a hole or past the log's end still returns, a span behind the position seeks again.
The real consumer is exercised by tests/integration/test_audit_values.py."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from k2.audit import values_source
from k2.settings import Settings


class _Message:
    def __init__(self, offset: int, eof: bool = False) -> None:
        self._offset, self._eof = offset, eof

    def error(self) -> Any:
        return _Eof() if self._eof else None

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k%d" % self._offset

    def value(self) -> bytes:
        return b"v%d" % self._offset

    def headers(self) -> list[tuple[str, bytes]]:
        return [("h", b"%d" % self._offset)]


class _Eof:
    def code(self) -> int:
        return KafkaError._PARTITION_EOF


class FakeConsumer:
    """A partition holding ``HELD`` (a transaction marker at 5, an aborted record at 12), served 4 at a time."""

    HELD = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 13, 14]
    seeks: list[int] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.position = 0

    def assign(self, partitions: list[Any]) -> None:
        self.position = partitions[0].offset
        FakeConsumer.seeks.append(self.position)

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        left = [o for o in self.HELD if o >= self.position][:4]
        if not left:
            return [_Message(self.HELD[-1] + 1, eof=True)]
        self.position = left[-1] + 1
        return [_Message(o) for o in left]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> values_source.SourceLog:
    monkeypatch.setattr(values_source, "log_reader", lambda settings, **conf: FakeConsumer(conf))
    monkeypatch.setattr(values_source, "AdminClient", lambda conf: None)
    FakeConsumer.seeks = []
    return values_source.SourceLog(Settings())


def test_spans_in_order_continue_one_fetch(log: values_source.SourceLog) -> None:
    first = log.read("t", 0, 0, 5)
    assert first.offsets.tolist() == [0, 1, 2, 3, 4]  # 5 holds no record: the next one says so
    second = log.read("t", 0, 6, 12)
    assert second.offsets.tolist() == [6, 7, 8, 9, 10, 11]
    assert (second.keys[0], second.values[-1], second.headers[1]) == (b"k6", b"v11", [("h", b"7")])
    last = log.read("t", 0, 13, 20)  # past the log's end: returns at the end
    assert last.offsets.tolist() == [13, 14]
    assert FakeConsumer.seeks == [0]
    assert log.records_read == 13


def test_a_span_behind_the_position_seeks_again(log: values_source.SourceLog) -> None:
    assert log.read("t", 0, 6, 9).offsets.tolist() == [6, 7, 8, 9]
    assert log.read("t", 0, 2, 3).offsets.tolist() == [2, 3]
    assert log.read("t", 0, 3, 4).offsets.tolist() == [3, 4]
    assert FakeConsumer.seeks == [6, 2, 3]
