"""``k2 audit`` against a real Kafka: transactions leave marker and aborted holes, compaction leaves superseded
holes, deleted records move the log start; lakes built by hand with pyiceberg, marks in their snapshot summaries.
(More on transactions, and ``--to-end``, in ``test_transactions.py``.)

The topics are produced once per module (compaction takes a few seconds); each test builds its own lake.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pyiceberg.catalog import Catalog

from k2.audit import audit
from k2.audit.companies import STALE, CompanyProblem
from k2.audit.ranges import Ranges
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, TRADES
from k2.lake.tables import ensure_tables
from tests.integration.conftest import Stack
from tests.integration.k2env import K2Env
from tests.unit.audit_helpers import land

pytestmark = pytest.mark.integration

QUOTES_LOG_START = 3
#: Reference keys (company ids) in production order; offsets 0, 1, 2 are superseded by 4, 5, 2->4.
REFERENCE_KEYS = [1, 2, 1, 3, 1, 2]


@dataclass(frozen=True)
class Topics:
    trades: str
    quotes: str
    reference: str
    trades1: list[int]
    """Offsets of trades partition 1 holding committed records (transactional: the markers and the aborted
    records hold none a read_committed reader sees)."""
    trades1_end: int
    survivors: list[int]
    """Offsets of the reference topic left after compaction."""

    def overrides(self) -> dict[str, str]:
        return {"K2_TRADES_TOPIC": self.trades, "K2_QUOTES_TOPIC": self.quotes, "K2_REFERENCE_TOPIC": self.reference}


def _produce(producer: Producer, topic: str, partition: int, n: int, key: bytes = b"k") -> list[int]:
    """Send ``n`` records; the offsets they got, once delivered."""
    offsets: list[int] = []

    def delivered(err: KafkaError | None, msg: object) -> None:
        assert err is None, err
        offsets.append(msg.offset())  # type: ignore[attr-defined]

    for i in range(n):
        producer.produce(topic, value=b"v%d" % i, key=key, partition=partition, on_delivery=delivered)
    assert producer.flush(30) == 0
    return offsets


def _offsets_held(bootstrap: str, topic: str, partition: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "k2-audit-test", "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return seen
            seen.append(msg.offset())  # type: ignore[arg-type]
        raise AssertionError(f"no end of {topic}/{partition} within 30s")
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def topics(stack: Stack) -> Iterator[Topics]:
    run = uuid.uuid4().hex[:8]
    names = Topics(f"a{run}.trades", f"a{run}.quotes", f"a{run}.reference", [], 0, [])
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    compacted = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    }
    futures = admin.create_topics(
        [
            NewTopic(names.trades, 2, 1),
            NewTopic(names.quotes, 1, 1),
            NewTopic(names.reference, 1, 1, config=compacted),
        ]
    )
    for future in futures.values():
        future.result(30)

    plain = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    assert _produce(plain, names.trades, 0, 20) == list(range(20))
    assert _produce(plain, names.quotes, 0, 10) == list(range(10))

    # Partition 1 of trades is written in transactions: committed, aborted (after its records went
    # out, so they are in the log and only a read_uncommitted reader sees them), committed.
    txn = Producer({"bootstrap.servers": stack.kafka_bootstrap, "transactional.id": f"k2-audit-{run}"})
    txn.init_transactions(30)
    held: list[int] = []
    for n, commit in ((5, True), (3, False), (4, True)):
        txn.begin_transaction()
        sent = _produce(txn, names.trades, 1, n)
        txn.commit_transaction(30) if commit else txn.abort_transaction(30)
        held += sent if commit else []
    assert held == [0, 1, 2, 3, 4, 10, 11, 12, 13]  # 5, 9 and 14 are the control markers, 6-8 aborted

    for company in REFERENCE_KEYS:
        _produce(plain, names.reference, 0, 1, key=str(company).encode())
    time.sleep(0.3)  # past segment.ms: the next record rolls the segment and the old one can be cleaned
    _produce(plain, names.reference, 0, 1, key=b"4")
    deadline = time.monotonic() + 90
    while (survivors := _offsets_held(stack.kafka_bootstrap, names.reference, 0)) != [3, 4, 5, 6]:
        assert time.monotonic() < deadline, f"the reference topic was not compacted: {survivors}"
        time.sleep(1)

    deleted = admin.delete_records([TopicPartition(names.quotes, 0, QUOTES_LOG_START)])
    for future in deleted.values():
        future.result(30)
    yield Topics(names.trades, names.quotes, names.reference, held, 15, survivors)
    admin.delete_topics([names.trades, names.quotes, names.reference])


@pytest.fixture
def env(stack: Stack, tmp_path: Path, topics: Topics) -> K2Env:
    return K2Env(stack, tmp_path, "sqlite", **topics.overrides())


@pytest.fixture
def catalog(env: K2Env) -> Catalog:
    catalog = env.catalog()
    ensure_tables(catalog)
    return catalog


def land_market(
    catalog: Catalog, table: str, partition: int, offsets: list[int], marks: dict[tuple[str, int], int]
) -> None:
    land(catalog, table, marks, kafka_partition=[partition] * len(offsets), kafka_offset=offsets)


def land_rejects(catalog: Catalog, positions: list[tuple[str, int, int]], marks: dict[tuple[str, int], int]) -> None:
    land(
        catalog,
        REJECTS,
        marks,
        source_topic=[t for t, _, _ in positions],
        source_partition=[p for _, p, _ in positions],
        source_offset=[o for _, _, o in positions],
    )


def land_reference(catalog: Catalog, topic: str, versions: list[int], latest: dict[int, int]) -> None:
    """``versions``: offsets landed in company_versions; ``latest``: company -> offset of its companies row."""
    keys = [*REFERENCE_KEYS, 4]
    mark = {(topic, 0): max(versions)}
    land(
        catalog,
        COMPANY_VERSIONS,
        mark,
        company_id=[keys[o] for o in versions],
        kafka_partition=[0] * len(versions),
        kafka_offset=versions,
    )
    land(
        catalog,
        COMPANIES,
        mark,
        company_id=list(latest),
        kafka_partition=[0] * len(latest),
        kafka_offset=list(latest.values()),
    )


def land_quotes_and_reference(catalog: Catalog, t: Topics) -> None:
    """Quotes and reference data as a correct worker leaves them."""
    quotes0 = (t.quotes, 0)
    # The quotes' first three records were deleted before the worker read them.
    land_market(catalog, QUOTES, 0, [3, 4, 5, 6], {quotes0: 6})
    land_rejects(catalog, [(t.quotes, 0, 7), (t.quotes, 0, 8), (t.quotes, 0, 9)], {quotes0: 9})
    # The worker read the reference topic after compaction: only the survivors reached it.
    land_reference(catalog, t.reference, t.survivors, {3: 3, 1: 4, 2: 5, 4: 6})


def faithful_lake(catalog: Catalog, t: Topics) -> None:
    """What a correct worker leaves: every record once, markers and compacted offsets nowhere."""
    trades0, trades1 = (t.trades, 0), (t.trades, 1)
    land_market(catalog, TRADES, 0, list(range(0, 12)), {trades0: 11})
    land_market(catalog, TRADES, 0, list(range(12, 20)), {trades0: 19})
    land_market(catalog, TRADES, 1, t.trades1, {trades0: 19, trades1: 13})
    land_quotes_and_reference(catalog, t)


def test_a_faithful_lake_keeps_the_law(env: K2Env, catalog: Catalog, topics: Topics) -> None:
    faithful_lake(catalog, topics)
    report = audit(env.settings, catalog)
    assert report.ok, report.render()
    trades1 = report.verdict(topics.trades, 1)
    # Markers 5 and 9 and the aborted 6-8 are in the judged window and hold no committed record; 14 (a marker)
    # is above the mark and no lag.
    assert (trades1.mark, trades1.no_record, trades1.lag, trades1.log_end) == (13, 5, 0, 15)
    reference = report.verdict(topics.reference, 0)
    assert (reference.checked, reference.no_record, reference.rows[COMPANY_VERSIONS]) == (7, 3, 4)
    quotes = report.verdict(topics.quotes, 0)
    assert (quotes.log_start, quotes.checked, quotes.rows) == (QUOTES_LOG_START, 7, {QUOTES: 4, REJECTS: 3})

    proc = env.k2("audit", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{topics.trades}  " in proc.stdout and proc.stderr == ""
    assert proc.stdout.splitlines()[-1].startswith("law holds: 3 topic(s), 4 partition(s), 48 offset(s) checked")
    assert env.k2("audit", "--to-end", check=False).returncode == 0


@pytest.mark.rest
def test_the_rest_catalog_over_s3(stack: Stack, tmp_path: Path, topics: Topics) -> None:
    env = K2Env(stack, tmp_path, "rest", **topics.overrides())
    env.drop_tables()
    catalog = env.catalog()
    ensure_tables(catalog)
    faithful_lake(catalog, topics)
    land_market(catalog, TRADES, 0, [5], {(topics.trades, 0): 19, (topics.trades, 1): 13})  # one offset twice
    report = audit(env.settings, catalog)
    assert report.verdict(topics.trades, 0).doubled == Ranges.of((5, 5))
    assert report.verdict(topics.trades, 1).no_record == 5
    proc = env.k2("audit", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"doubled            {topics.trades}/0: 5 (in market_data.trades 2 row(s))" in proc.stdout
    assert "RestCatalog)" in proc.stdout.splitlines()[0]


def test_a_broken_lake_is_exit_1_with_every_violation(env: K2Env, catalog: Catalog, topics: Topics) -> None:
    trades0, trades1, quotes0 = (topics.trades, 0), (topics.trades, 1), (topics.quotes, 0)
    land_market(catalog, TRADES, 0, [*range(0, 7), *range(10, 20)], {trades0: 19})  # 7, 8, 9 lost
    land_rejects(catalog, [(topics.trades, 0, 3), (topics.quotes, 0, 0)], {trades0: 3, quotes0: 0})  # 3 twice
    # Committed 3 is lost; the aborted transaction's 7 reached a read_uncommitted worker and landed.
    land_market(catalog, TRADES, 1, sorted([o for o in topics.trades1 if o != 3] + [7]), {trades0: 19, trades1: 13})
    # Quote 0 is below the log start now, yet in two tables; 1, 2 are gone and not judged.
    land_market(catalog, QUOTES, 0, [0, *range(3, 10)], {quotes0: 9})
    # Versions landed before compaction, but companies kept company 1's middle version.
    land_reference(catalog, topics.reference, list(range(7)), {1: 2, 2: 5, 3: 3, 4: 6})

    report = audit(env.settings, catalog)
    assert not report.ok
    assert report.verdict(topics.trades, 0).missing == Ranges.of((7, 9))
    assert report.verdict(topics.trades, 0).doubled == Ranges.of((3, 3))
    assert report.verdict(topics.trades, 1).missing == Ranges.of((3, 3))
    assert report.verdict(topics.trades, 1).not_committed == Ranges.of((7, 7))
    assert report.verdict(topics.trades, 1).no_record == 4  # 5, 6, 8, 9: 7 is no hole, it is a row
    assert report.verdict(topics.quotes, 0).doubled == Ranges.of((0, 0))
    assert report.verdict(topics.quotes, 0).missing == Ranges.of()
    assert report.companies == (CompanyProblem(1, STALE, row=(0, 2), latest=(0, 4)),)

    proc = env.k2("audit", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"missing            {topics.trades}/0: 7-9\n" in out
    assert f"missing            {topics.trades}/1: 3\n" in out
    assert f"not committed      {topics.trades}/1: 7 (" in out
    assert (
        f"doubled            {topics.trades}/0: 3 (in market_data.rejects 1 row(s), market_data.trades 1 row(s))" in out
    )
    assert f"doubled            {topics.quotes}/0: 0 (" in out
    assert "companies          company 1: companies holds 0@2, latest version is 0@4" in out
    assert out.splitlines()[-1].startswith(
        "LAW BROKEN: 4 missing, 2 doubled, 1 row(s) of records Kafka does not hold committed, 1 companies problem(s);"
    )

    proc = env.k2("audit", "--json", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    by_tp = {(p["topic"], p["partition"]): p for p in doc["partitions"]}
    assert by_tp[trades1]["missing"]["ranges"] == [[3, 3]]
    assert by_tp[trades1]["missing"]["no_record"] == 4
    assert by_tp[trades1]["not_committed"]["ranges"] == [[7, 7]]
    assert [c["kind"] for c in doc["companies"]] == [STALE]


def test_settle_forgives_a_flush_in_flight(env: K2Env, catalog: Catalog, topics: Topics) -> None:
    trades0, trades1 = (topics.trades, 0), (topics.trades, 1)
    land_market(catalog, TRADES, 0, list(range(0, 12)), {trades0: 11})
    land_market(catalog, TRADES, 1, topics.trades1, {trades0: 11, trades1: 13})
    land_quotes_and_reference(catalog, topics)
    # This flush's rejects committed first (marks are cumulative: the quotes' stay).
    land_rejects(catalog, [(topics.trades, 0, 19)], {trades0: 19, (topics.quotes, 0): 9})
    assert audit(env.settings, catalog).verdict(topics.trades, 0).missing == Ranges.of((12, 18))

    waited: list[float] = []

    def the_trades_commit_lands(seconds: float) -> None:
        waited.append(seconds)
        land_market(catalog, TRADES, 0, list(range(12, 19)), {trades0: 18, trades1: 13})

    report = audit(env.settings, catalog, settle_s=0.5, sleep=the_trades_commit_lands)
    assert waited == [0.5]
    assert report.ok, report.render()


def test_a_missing_topic_is_exit_2(stack: Stack, tmp_path: Path, topics: Topics) -> None:
    env = K2Env(stack, tmp_path, "sqlite", **{**topics.overrides(), "K2_QUOTES_TOPIC": f"{topics.quotes}.nope"})
    ensure_tables(env.catalog())
    proc = env.k2("audit", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"topic {topics.quotes}.nope does not exist on Kafka" in proc.stderr and "run `k2 init`" in proc.stderr
