"""Kafka's transactions on the command side, against the real broker: ends are last stable offsets, the audit
reads ``read_committed`` (a row of an aborted record fails it, control markers are neither lag nor missing),
``--to-end`` judges what never landed, and a transaction left open is shown as open, not as lag.

The lakes are built by hand with pyiceberg: a faithful one holds the committed records only; the one the
issue saw (a ``read_uncommitted`` worker) holds the aborted records too.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from k2.admin.group import GroupAdmin
from k2.admin.watermarks import LogEnds, end_offsets
from k2.audit import audit
from k2.audit.kafka import KafkaLog
from k2.audit.ranges import Ranges
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, TRADES
from k2.lake.tables import ensure_tables
from k2.settings import Settings
from tests.integration.conftest import Stack
from tests.integration.k2env import K2Env
from tests.unit.audit_helpers import land

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"

TIMEOUT_MS = 10_000
"""transaction.timeout.ms of the producer that dies inside a transaction: the broker aborts it after this."""

# trades/1 is written by a producer process that commits one transaction, then dies inside the next.
_DIES_IN_A_TRANSACTION = """
import os, sys
from confluent_kafka import Producer
bootstrap, topic, txn_id, timeout_ms = sys.argv[1:5]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": int(timeout_ms)})
p.init_transactions(30)
p.begin_transaction()
for i in range(3):
    p.produce(topic, b"committed %d" % i, partition=1)
p.commit_transaction(30)
p.begin_transaction()
for i in range(2):
    p.produce(topic, b"never committed %d" % i, partition=1)
assert p.flush(30) == 0
os._exit(0)  # killed inside the transaction: no commit, no abort
"""


@dataclass(frozen=True)
class Topics:
    trades: str
    quotes: str
    reference: str

    def overrides(self) -> dict[str, str]:
        return {"K2_TRADES_TOPIC": self.trades, "K2_QUOTES_TOPIC": self.quotes, "K2_REFERENCE_TOPIC": self.reference}


def _send(producer: Producer, topic: str, partition: int, n: int) -> None:
    for i in range(n):
        producer.produce(topic, value=b"v%d" % i, key=b"k", partition=partition)
    assert producer.flush(30) == 0


def _create(admin: AdminClient, topics: Topics, trades_partitions: int) -> None:
    futures = admin.create_topics(
        [NewTopic(topics.trades, trades_partitions, 1), NewTopic(topics.quotes, 1, 1), NewTopic(topics.reference, 1, 1)]
    )
    for future in futures.values():
        future.result(30)


def _ends(stack: Stack, topic: str, partition: int) -> LogEnds:
    admin = GroupAdmin(Settings(kafka_bootstrap_servers=stack.kafka_bootstrap))
    return admin.ends([(topic, partition)])[(topic, partition)]


@pytest.fixture(scope="module")
def topics(stack: Stack) -> Iterator[Topics]:
    """trades/0: 0-4 committed, 5 marker, 6-8 aborted, 9 marker, 10-13 committed, 14 marker (end 15);
    trades/1: 0-2 committed, 3 marker, 4-5 of a producer that died, aborted by the broker on timeout,
    6 marker (end 7); quotes/0: 0-9 and reference/0: 0-2, no transactions."""
    run = uuid.uuid4().hex[:8]
    names = Topics(f"x{run}.trades", f"x{run}.quotes", f"x{run}.reference")
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    _create(admin, names, 2)
    dying = subprocess.run(
        [
            sys.executable,
            "-c",
            _DIES_IN_A_TRANSACTION,
            stack.kafka_bootstrap,
            names.trades,
            f"x{run}-dies",
            str(TIMEOUT_MS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dying.returncode == 0, dying.stderr
    txn = Producer({"bootstrap.servers": stack.kafka_bootstrap, "transactional.id": f"x{run}-trades"})
    txn.init_transactions(30)
    for n, commit in ((5, True), (3, False), (4, True)):
        txn.begin_transaction()
        _send(txn, names.trades, 0, n)
        txn.commit_transaction(30) if commit else txn.abort_transaction(30)
    plain = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    _send(plain, names.quotes, 0, 10)
    _send(plain, names.reference, 0, 3)
    # The broker aborts the dead producer's transaction once it times out (and its abort sweep runs).
    deadline = time.monotonic() + TIMEOUT_MS / 1000 + 60
    while (ends := _ends(stack, names.trades, 1)) != LogEnds(0, 7, 7):
        assert time.monotonic() < deadline, f"the broker did not abort the timed-out transaction: {ends}"
        time.sleep(1)
    yield names
    admin.delete_topics([names.trades, names.quotes, names.reference])


@pytest.fixture
def env(stack: Stack, tmp_path: Path, topics: Topics) -> K2Env:
    env = K2Env(stack, tmp_path, "sqlite", **topics.overrides())
    ensure_tables(env.catalog())
    return env


def land_rows(env: K2Env, table: str, partition: int, offsets: list[int], marks: dict[tuple[str, int], int]) -> None:
    land(env.catalog(), table, marks, kafka_partition=[partition] * len(offsets), kafka_offset=offsets)


def land_others(env: K2Env, t: Topics) -> None:
    """Quotes and reference data, every record once."""
    land_rows(env, QUOTES, 0, list(range(10)), {(t.quotes, 0): 9})
    for table in (COMPANY_VERSIONS, COMPANIES):  # three companies, one version each
        land(
            env.catalog(),
            table,
            {(t.reference, 0): 2},
            company_id=[1, 2, 3],
            kafka_partition=[0] * 3,
            kafka_offset=[0, 1, 2],
        )


def test_the_ends_are_last_stable_offsets(env: K2Env, topics: Topics) -> None:
    ends = end_offsets(env.settings, env.settings.source_topics)
    assert ends == {(topics.trades, 0): 15, (topics.trades, 1): 7, (topics.quotes, 0): 10, (topics.reference, 0): 3}


def test_committed_records_alone_keep_the_law(env: K2Env, topics: Topics) -> None:
    t0, t1 = (topics.trades, 0), (topics.trades, 1)
    land_rows(env, TRADES, 0, [0, 1, 2, 3, 4, 10, 11, 12, 13], {t0: 13})
    land_rows(env, TRADES, 1, [0, 1, 2], {t0: 13, t1: 2})
    land_others(env, topics)
    report = audit(env.settings, env.catalog())
    assert report.ok, report.render()
    trades0, trades1 = report.verdict(*t0), report.verdict(*t1)
    # 5 and 9 are markers, 6-8 aborted: no record for a read_committed reader. 14 (a marker) is above
    # the mark, and so are trades/1's 3-6 (a marker, the aborted pair, a marker): none of it is lag.
    assert (trades0.no_record, trades0.log_end, trades0.lag, trades0.committed_read) == (5, 15, 0, True)
    assert (trades1.mark, trades1.log_end, trades1.lag) == (2, 7, 0)
    assert report.lag == 0 and not report.notes
    for args in (("audit",), ("audit", "--to-end")):
        done = env.k2(*args, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith(
        "law holds: 3 topic(s), 4 partition(s), 35 offset(s) checked from log start to end"
    )


def test_rows_of_aborted_records_break_the_law(env: K2Env, topics: Topics) -> None:
    """The lake a read_uncommitted worker leaves: every record it was handed, aborted ones too."""
    t0, t1 = (topics.trades, 0), (topics.trades, 1)
    land_rows(env, TRADES, 0, [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13], {t0: 13})
    land_rows(env, TRADES, 1, [0, 1, 2, 4, 5], {t0: 13, t1: 5})
    land_others(env, topics)
    report = audit(env.settings, env.catalog())
    assert not report.ok
    assert report.verdict(*t0).not_committed == Ranges.of((6, 8))
    assert report.verdict(*t1).not_committed == Ranges.of((4, 5))
    assert report.missing == 0 and report.doubled == 0

    done = env.k2("audit", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"not committed      {topics.trades}/0: 6-8 (rows at offsets where read_committed Kafka holds no record,"
        in done.stdout
    )
    assert f"not committed      {topics.trades}/1: 4-5 (" in done.stdout
    assert done.stdout.splitlines()[-1].startswith(
        "LAW BROKEN: 0 missing, 0 doubled, 5 row(s) of records Kafka does not hold committed;"
    )
    doc = json.loads(env.k2("audit", "--json", check=False).stdout)
    by_tp = {(p["topic"], p["partition"]): p for p in doc["partitions"]}
    assert by_tp[t0]["not_committed"]["ranges"] == [[6, 8]] and by_tp[t0]["not_committed"]["judged"]


def test_to_end_names_what_never_landed(env: K2Env, topics: Topics) -> None:
    """A lake whose trades stopped at offset 4 of partition 0 and never began partition 1 (no worker owns it)."""
    t0 = (topics.trades, 0)
    land_rows(env, TRADES, 0, [0, 1, 2, 3, 4], {t0: 4})
    land_others(env, topics)
    report = audit(env.settings, env.catalog())
    # Lag, not judged: offsets from the first record waiting to the end (markers and aborted records
    # among them are counted; those after the last record are not lag, and nor is a partition of them alone).
    assert report.ok and (report.verdict(*t0).lag, report.verdict(topics.trades, 1).lag) == (15 - 10, 7 - 0)
    (note,) = report.notes
    assert note.startswith(f"unowned: {topics.trades}/0 (5 offsets waiting "), note
    assert f"{topics.trades}/1 (7 offsets waiting " in note and "no member of group k2-test-" in note

    ended = audit(env.settings, env.catalog(), to_end=True, settle_s=0.5)
    assert not ended.ok
    assert ended.verdict(*t0).missing == Ranges.of((10, 13))  # 5-9 hold no committed record
    assert ended.verdict(topics.trades, 1).missing == Ranges.of((0, 2))
    assert ended.lag == 0 and ended.settled_s == 0.5

    done = env.k2("audit", "--to-end", "--settle", "1", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"missing            {topics.trades}/0: 10-13\n" in done.stdout
    assert f"missing            {topics.trades}/1: 0-2\n" in done.stdout
    assert f"note  unowned: {topics.trades}/0 (5 offsets waiting" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("LAW BROKEN: 7 missing, 0 doubled; still missing after 1s;")
    done = env.k2("audit", check=False)
    assert done.returncode == 0 and "12 above the marks not judged (lake lag)" in done.stdout, done.stdout


@pytest.fixture
def open_transaction(stack: Stack) -> Iterator[tuple[Topics, Producer]]:
    """trades/0: 0-2 committed, 3 marker, then 4-6 in a transaction left open (aborted at the end)."""
    run = uuid.uuid4().hex[:8]
    names = Topics(f"o{run}.trades", f"o{run}.quotes", f"o{run}.reference")
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    _create(admin, names, 1)
    txn = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap, "transactional.id": f"o{run}", "transaction.timeout.ms": 300_000}
    )
    txn.init_transactions(30)
    txn.begin_transaction()
    _send(txn, names.trades, 0, 3)
    txn.commit_transaction(30)
    txn.begin_transaction()
    _send(txn, names.trades, 0, 3)
    yield names, txn
    txn.abort_transaction(30)
    admin.delete_topics([names.trades, names.quotes, names.reference])


def _watermarks(bootstrap: str, tp: tuple[str, int], isolation: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """A consumer's ``get_watermark_offsets``: asked of the broker, then from its cache after a fetch."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "k2-txn-test",
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        asked = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10, cached=False)
        consumer.assign([TopicPartition(*tp, 0)])
        deadline = time.monotonic() + 30
        while not any(m.error() is not None for m in consumer.consume(100, timeout=1)):  # to the end of the log
            assert time.monotonic() < deadline
        return asked, consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
    finally:
        consumer.close()


def test_what_librdkafka_answers_while_a_transaction_is_open(
    stack: Stack, open_transaction: tuple[Topics, Producer]
) -> None:
    """The calls K2 could ask for a partition's end, against the broker, with 4-6 in an open transaction."""
    names, _ = open_transaction
    tp = (names.trades, 0)
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    latest = {
        level: admin.list_offsets({TopicPartition(*tp): OffsetSpec.latest()}, isolation_level=level, request_timeout=10)
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
    }
    found = {level: next(iter(futures.values())).result(20).offset for level, futures in latest.items()}
    assert found == {IsolationLevel.READ_COMMITTED: 4, IsolationLevel.READ_UNCOMMITTED: 7}
    default = admin.list_offsets({TopicPartition(*tp): OffsetSpec.latest()}, request_timeout=10)
    assert next(iter(default.values())).result(20).offset == 7  # list_offsets defaults to READ_UNCOMMITTED
    # A consumer asks with its own isolation; its cache holds the high watermark whatever the isolation.
    assert _watermarks(stack.kafka_bootstrap, tp, "read_committed") == ((0, 4), (0, 7))
    assert _watermarks(stack.kafka_bootstrap, tp, "read_uncommitted") == ((0, 7), (0, 7))


def test_an_open_transaction_is_neither_lag_nor_missing(
    stack: Stack, tmp_path: Path, open_transaction: tuple[Topics, Producer]
) -> None:
    names, _ = open_transaction
    env = K2Env(stack, tmp_path, "sqlite", **names.overrides())
    ensure_tables(env.catalog())
    t0 = (names.trades, 0)
    with KafkaLog(env.settings) as log:
        assert log.bounds([names.trades])[t0] == LogEnds(0, 4, 7)
    land_rows(env, TRADES, 0, [0, 1, 2], {t0: 2})
    report = audit(env.settings, env.catalog(), to_end=True)
    assert report.ok, report.render()
    v = report.verdict(*t0)
    assert (v.log_end, v.high, v.open, v.lag, v.missing) == (4, 7, True, 0, Ranges.of())
    assert f"note  open transaction {names.trades}/0: offsets 4-6 are not committed yet" in report.render()

    tables = env.k2("tables")
    assert f"open transaction {names.trades}/0: offsets 4-6 are not committed yet" in tables.stdout
    assert "lake lag: 0 event(s)" in tables.stdout and "unowned" not in tables.stdout
    status = env.k2("status", "--json", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    part = next(p for p in json.loads(status.stdout)["partitions"] if (p["topic"], p["partition"]) == t0)
    assert (part["end"], part["high_watermark"], part["open_transaction"], part["lake_lag"]) == (4, 7, 3, 0)

    # A read_uncommitted worker would have landed the open transaction's records already.
    land_rows(env, TRADES, 0, [4, 5], {t0: 5})
    done = env.k2("audit", check=False)
    assert done.returncode == 1
    assert (
        f"open transaction   {names.trades}/0: the lake's mark is 5, but offsets from 4 to 6 are a transaction"
        in done.stdout
    )


def _read(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[tuple[int, int, bytes, bytes]]:
    """Every record of ``topic`` a reader of ``isolation`` gets: (partition, offset, key, value)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "k2-txn-read",
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out, ended, deadline = [], set(), time.monotonic() + 60
        while len(ended) < partitions:
            assert time.monotonic() < deadline, f"no end of {topic} within 60s"
            for m in consumer.consume(1000, timeout=1):
                if m.error() is not None:
                    ended.add(m.partition())
                else:
                    out.append((m.partition(), m.offset(), m.key(), m.value()))
        return out
    finally:
        consumer.close()


def test_a_worker_fed_in_transactions_is_judged_by_the_committed_records(stack: Stack, tmp_path: Path) -> None:
    """Valid trades copied into K2's trades topic in transactions, every third one aborted, then a worker.

    Whatever the worker lands, the audit's verdict must be what an independent reading says: every
    committed record exactly once, no row of an aborted one. (A worker reading ``read_uncommitted``
    lands the aborted ones, and the audit must name them.)
    """
    stage = K2Env(stack, tmp_path / "stage", "sqlite")
    stage.k2("init", "--skip-tables")
    stage.k2("replay", str(SAMPLE), "--symbols", "MWR,DVN", "--no-progress")  # 243 trades
    env = K2Env(stack, tmp_path / "k2", "sqlite")
    env.k2("init")
    s = env.settings
    staged = _read(stack.kafka_bootstrap, stage.settings.trades_topic, s.trades_partitions, "read_committed")
    txn = Producer({"bootstrap.servers": stack.kafka_bootstrap, "transactional.id": f"k2-{s.app_id}"})
    txn.init_transactions(30)
    for n, at in enumerate(range(0, len(staged), 20)):
        txn.begin_transaction()
        for partition, _, key, value in staged[at : at + 20]:
            txn.produce(s.trades_topic, value=value, key=key, partition=partition)
        assert txn.flush(30) == 0
        txn.abort_transaction(30) if n % 3 == 2 else txn.commit_transaction(30)
    env.start_worker()
    try:
        with contextlib.suppress(AssertionError):  # judged as it is, landed or not
            env.wait_landed(timeout_s=120)
        report = audit(s, env.catalog(), to_end=True, settle_s=5)
    finally:
        env.close()  # the worker must not outlive the test (it did, for the rest of the suite)

    committed = _read(stack.kafka_bootstrap, s.trades_topic, s.trades_partitions, "read_committed")
    everything = _read(stack.kafka_bootstrap, s.trades_topic, s.trades_partitions, "read_uncommitted")
    assert len(everything) > len(committed) > 0
    rows = env.catalog().load_table(TRADES).scan(selected_fields=("kafka_partition", "kafka_offset")).to_arrow()
    rejects = env.catalog().load_table(REJECTS).scan().to_arrow().to_pylist()
    landed = set(zip(rows["kafka_partition"].to_pylist(), rows["kafka_offset"].to_pylist(), strict=True))
    landed |= {(r["source_partition"], r["source_offset"]) for r in rejects if r["source_topic"] == s.trades_topic}
    held = {(p, o) for p, o, _, _ in committed}
    for partition in range(s.trades_partitions):
        v = report.verdict(s.trades_topic, partition)
        assert set(_offsets(v.not_committed)) == {o for p, o in landed - held if p == partition}
        assert set(_offsets(v.missing)) == {o for p, o in held - landed if p == partition}
    aborted_rows = len(landed - held)
    print(f"\n{len(committed)} committed, {len(everything) - len(committed)} aborted; {aborted_rows} aborted landed")
    print(report.summary())
    assert report.ok == (landed == held), report.render()


def _offsets(ranges: Ranges) -> list[int]:
    return [o for a, b in ranges for o in range(a, b + 1)]
