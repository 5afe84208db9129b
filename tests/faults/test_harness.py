"""The fault harness's own pure parts: offset ranges, reading ``k2 audit``, the poison mixer.

No stack needed. A harness that misreads a range or mixes poison ahead of the record it
damages would make the fault scenarios' evidence wrong, so these are checked on their own.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.faults.law import parse_audit_json, parse_audit_text, parse_values_json
from tests.faults.poison import HUGE_VALUE_BYTES, KINDS, PoisonGenerator, _high_bit_frame, mix
from tests.faults.ranges import format_ranges, position_ranges, ranges
from tests.faults.source import Decoded, SourceRecord
from tests.faults.takeover import Takeover, buffer_bound, recovery_rounds


def test_ranges_are_inclusive_runs_of_sorted_distinct_offsets() -> None:
    assert ranges([7, 0, 2, 1, 2, 9, 8]) == [[0, 2], [7, 9]]
    assert ranges([]) == []
    found = position_ranges([("t", 1, 5), ("t", 0, 3), ("t", 0, 4), ("u", 0, 0)])
    assert found == {"t/0": [[3, 4]], "t/1": [[5, 5]], "u/0": [[0, 0]]}
    assert format_ranges(found) == "t/0:3-4 t/1:5 u/0:0"
    assert format_ranges({"t/0": [[i * 2, i * 2] for i in range(5)]}, limit=2) == "t/0:0,2 (+3 more runs)"


def test_audit_text_report_lines_become_ranges() -> None:
    output = "\n".join(
        [
            "topic  partition  log start  mark  log end  rows  rejects  missing  doubled",
            "missing            market.trades.raw/3: 23304-23316, 23400, ... (4 more range(s))",
            "doubled            market.quotes.raw/0: 5-6 (in market_data.quotes 4 row(s))",
            "beyond mark        market.quotes.raw/1 in market_data.quotes (its mark: 10): 11-12",
            "not committed      market.trades.raw/1: 6-8, 14 (rows at offsets where read_committed Kafka holds no "
            "record, as of aborted transactions or control markers)",
            "LAW BROKEN: 14 missing, 2 doubled",
        ]
    )
    found = parse_audit_text(output)
    assert found["not committed"] == {"market.trades.raw/1": [[6, 8], [14, 14]]}
    assert found["missing"] == {"market.trades.raw/3": [[23304, 23316], [23400, 23400]]}
    assert found["doubled"] == {"market.quotes.raw/0": [[5, 6]]}
    assert found["beyond mark"] == {"market.quotes.raw/1": [[11, 12]]}


def test_audit_json_report_becomes_ranges() -> None:
    report = {
        "ok": False,
        "partitions": [
            {"topic": "t", "partition": 0, "missing": {"ranges": [[0, 2]]}, "doubled": {"ranges": []}},
            {"topic": "t", "partition": 1, "missing": {"ranges": []}, "doubled": {"ranges": [[4, 4]]},
             "beyond_mark": {"market_data.trades": {"ranges": [[9, 10]], "mark": 8}}, "gaps_doubled": {"ranges": []},
             "not_committed": {"ranges": [[6, 8]], "judged": True}},
        ],
    }  # fmt: skip
    found = parse_audit_json(report)
    assert found == {
        "missing": {"t/0": [[0, 2]]},
        "doubled": {"t/1": [[4, 4]]},
        "beyond mark": {"t/1": [[9, 10]]},
        "not committed": {"t/1": [[6, 8]]},
    }


def test_values_json_becomes_the_ranges_of_rows_that_differ_in_any_column() -> None:
    values = {
        "ok": False,
        "mismatches": [
            {"table": "market_data.trades", "topic": "t", "partition": 0, "column": "price",
             "ranges": [{"first": 3, "last": 5, "examples": []}, {"first": 9, "last": 9, "examples": []}]},
            {"table": "market_data.trades", "topic": "t", "partition": 0, "column": "volume",
             "ranges": [{"first": 6, "last": 7, "examples": []}]},
            {"table": "market_data.rejects", "topic": "t", "partition": 2, "column": "headers",
             "ranges": [{"first": 1, "last": 1, "examples": []}]},
        ],
    }  # fmt: skip
    assert parse_values_json(values) == {"t/0": [[3, 7], [9, 9]], "t/2": [[1, 1]]}
    assert parse_values_json({"ok": True, "mismatches": []}) == {}


class FakeRegistry:
    """Schema id 1 for every subject; a value decodes only when it is one of the known good frames."""

    def __init__(self, good: set[bytes]) -> None:
        self.good = good

    def latest(self, subject: str) -> tuple[int, Any]:
        return 1, None

    def decode(self, value: bytes | None, subject: str) -> Decoded | None:
        return Decoded(1, {"symbol": "BHP"}) if value in self.good else None


def staged_records(topic: str, partitions: int, per_partition: int) -> dict[tuple[str, int], list[SourceRecord]]:
    out: dict[tuple[str, int], list[SourceRecord]] = {}
    for p in range(partitions):
        out[(topic, p)] = [
            SourceRecord(topic, p, o, b"BHP", b"\x00\x00\x00\x00\x01" + f"p{p}o{o}".encode() * 4)
            for o in range(per_partition)
        ]
    return out


@pytest.mark.parametrize("high_bit_ids", [True, False])
def test_mixer_keeps_each_partitions_order_and_damages_only_earlier_records(high_bit_ids: bool) -> None:
    staged = staged_records("stage.trades", 3, 200)
    good = {r.value for records in staged.values() for r in records if r.value}
    gen = PoisonGenerator(random.Random(7), FakeRegistry(good), {"t.trades": "s"}, high_bit_ids=high_bit_ids)  # type: ignore[arg-type]
    weights = {k: v for k, v in KINDS.items() if high_bit_ids or k != "high_bit_schema_id"}
    out = mix(staged, {"stage.trades": "t.trades"}, ["t.trades"], 500, 2, gen, {"t.trades": 3}, weights)
    poison = [o for o in out if o.poison is not None]
    assert len(poison) == 500
    assert sum(1 for o in poison if o.poison is not None and o.poison.kind == "huge") == 2
    assert all(len(o.value or b"") == HUGE_VALUE_BYTES for o in poison if o.poison and o.poison.kind == "huge")
    kinds = {o.poison.kind for o in poison if o.poison}
    assert {"truncated", "flipped_bit", "tombstone", "empty_value"} <= kinds <= {*KINDS, "huge"}
    for p in range(3):
        in_partition = [o for o in out if o.partition == p]
        replayed = [o.value for o in in_partition if o.poison is None]
        assert replayed == [r.value for r in staged[("stage.trades", p)]], "replayed records keep their order"
        seen: list[bytes] = []
        for o in in_partition:
            if o.poison is None:
                assert o.value is not None
                seen.append(o.value)
            elif o.poison.kind == "truncated":
                assert any(v.startswith(o.value or b"\xff") and v != o.value for v in seen)
            elif o.poison.kind == "flipped_bit":
                assert any(_one_bit_apart(v, o.value or b"") for v in seen), "a flipped copy follows its original"
            if not high_bit_ids:
                assert not _high_bit_frame(o.value) or o.poison is None
    assert all(o.poison is None or o.poison.expect == "reject" for o in out)  # nothing decodes in the fake


def _one_bit_apart(a: bytes, b: bytes) -> bool:
    return len(a) == len(b) and sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True)) == 1


_RECOVERY_LOG = """\
[2026-12-06 14:50:36,565] [9485] [INFO] generation id 3 app consumers id 3
[2026-12-06 14:50:37,084] [9485] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active-----------------------+-----------+-----------+
| topic                                   | partition | highwater |
+-----------------------------------------+-----------+-----------+
| app-buffer-t-changelog                  | 0         | 1345      |
| \u3003                                      | 1         | -1        |
| app-reference-r-changelog               | 0         | 15        |
| app-sequences-t-changelog               | 0         | 11550     |
| \u3003                                      | 1         | 959       |
+-----------------------------------------+-----------+-----------+
[2026-12-06 14:50:37,285] [9485] [INFO] [^---Recovery]: active offsets at start of reading:
+Reading Starts At - Active---------------+-----------+--------+
| topic                                   | partition | offset |
+-----------------------------------------+-----------+--------+
| app-buffer-t-changelog                  | 0         | -1     |
| \u3003                                      | 1         | -1     |
| app-reference-r-changelog               | 0         | 15     |
| app-sequences-t-changelog               | 0         | -1     |
| \u3003                                      | 1         | 500    |
+-----------------------------------------+-----------+--------+
[2026-12-06 14:50:37,298] [9485] [INFO] [^---Recovery]: Restoring state from changelog topics...
[2026-12-06 14:51:12,070] [9485] [INFO] [^---Recovery]: Done reading from changelog topics
[2026-12-06 14:51:12,100] [9485] [INFO] [^---Recovery]: Worker ready
[2026-12-06 14:52:00,000] [9485] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active-----------------------+-----------+-----------+
| topic                                   | partition | highwater |
+-----------------------------------------+-----------+-----------+
| app-buffer-t-changelog                  | 0         | 1400      |
+-----------------------------------------+-----------+-----------+
"""


def test_recovery_rounds_read_faust_tables_with_ditto_marks_and_times() -> None:
    """What a survivor restores is read from faust's recovery log: the offsets of each changelog partition
    after its start offset up to the highwater (ditto marks repeat the topic above), and the times."""
    first, second = recovery_rounds(_RECOVERY_LOG)
    assert first.ranges() == {
        ("app-buffer-t-changelog", 0): (0, 1345),
        ("app-sequences-t-changelog", 0): (0, 11550),
        ("app-sequences-t-changelog", 1): (501, 959),
    }  # partition 1 of the buffer is empty (-1); the reference table is read already (15 of 15)
    assert first.offsets == 1346 + 11551 + 459
    assert first.starts_at is not None and first.ready_at is not None
    assert round(first.ready_at - first.starts_at, 3) == 34.815
    assert round(first.starts_at - first.highwater_at, 3) == 0.201
    assert second.starts == {} and second.ready_at is None  # a restore still under way
    assert second.ranges() == {("app-buffer-t-changelog", 0): (0, 1400)}
    cut = _RECOVERY_LOG.index("| app-sequences-t-changelog               | 0         | -1")
    (partial,) = recovery_rounds(_RECOVERY_LOG[:cut])  # the log read while the worker writes its table
    assert partial.starts_at is None and partial.highwaters == first.highwaters


def test_a_takeover_is_bounded_by_twice_the_buffer() -> None:
    bound = buffer_bound({"K2_FLUSH_MAX_ROWS": "1000"})
    assert bound == 2000 and buffer_bound({}) == 400_000
    assert Takeover("w0", "w1", 300.0, bound, restored_records=4000).bounded
    assert not Takeover("w0", "w1", 300.0, bound, restored_records=4001).bounded
    assert Takeover("w0", "w1", 300.0, bound).bounded is None  # not counted: the scenario fails on that


def test_a_registry_that_is_slow_is_asked_again_and_its_own_answers_are_final(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout once made every frame of a run "undecodable" (the subject's ids read as none): the suite
    then reported every landed row as a bad event. Only the registry's answers decide; failures are asked again."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from tests.faults import source

    monkeypatch.setattr(source.time, "sleep", lambda s: None)
    answers: list[Any] = [TimeoutError("read timed out"), SchemaRegistryError(503, 50301, "busy"), [1, 2]]

    def call() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert source._asked(call) == [1, 2] and answers == []
    answers[:] = [SchemaRegistryError(404, 40401, "Subject not found"), [1]]
    with pytest.raises(SchemaRegistryError):
        source._asked(call)
    answers[:] = [TimeoutError()] * 5
    with pytest.raises(TimeoutError):
        source._asked(call)


def test_the_suite_decodes_a_clean_frame_and_only_a_clean_frame() -> None:
    """The suite's decoder once called a function fastavro does not have, and read that as "undecodable" for
    every frame of every run. A clean frame decodes; a truncated one or a wrong id does not."""
    import fastavro

    from tests.faults.source import Registry, encode

    schema = fastavro.parse_schema(
        {"type": "record", "name": "T", "fields": [{"name": "symbol", "type": "string"}, {"name": "n", "type": "long"}]}
    )
    registry = Registry("http://127.0.0.1:9")  # never asked: its caches answer
    registry._subject_ids["t-value"] = {7}
    registry._schemas[7] = schema
    frame = encode(7, schema, {"symbol": "BHP", "n": 42})
    decoded = registry.decode(frame, "t-value")
    assert decoded is not None and decoded.schema_id == 7 and decoded.record == {"symbol": "BHP", "n": 42}
    assert registry.decode(frame[:-1], "t-value") is None
    assert registry.decode(frame + b"\x00", "t-value") is None
    assert registry.decode(encode(8, schema, {"symbol": "BHP", "n": 42}), "t-value") is None
