"""K2's liveness under faults: every partition the group holds lands, whatever the group and the producers do.

Each scenario is judged like the others (the law and the values, from the outside, in
:meth:`Scenario.conclude`) and, after each fault, by :func:`wait_every_partition_lands`:
what Kafka held beyond each partition's lake mark when the fault was over must be in the lake
within a bound, partition by partition. A worker that owns partitions it never reads, or
partitions nobody owns, fail here by name instead of passing as "lake lag".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from tests.faults.config import SAMPLE, SAMPLE_EVENTS
from tests.faults.liveness import wait_every_partition_lands
from tests.faults.scenario import Scenario, ScenarioFactory, bounded
from tests.faults.source import Registry, encode, make_producer, trade

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.rest, pytest.mark.timeout(7200)]

#: Seconds after a fault by which every partition must have landed what it held (assignment, table
#: restore and positioning included, on a shared 2-core machine).
LANDING_BOUND_S = 120.0


def check_landing(sc: Scenario, what: str, bound_s: float = LANDING_BOUND_S) -> None:
    """Every partition lands what Kafka holds now within ``bound_s``; the time is reported, a stall fails."""
    landing = wait_every_partition_lands(
        lambda: bounded(sc.env.end_offsets, 30.0, None),
        lambda: bounded(sc.env.marks, 30.0, None),
        bound_s,
        tick=sc.tick,
    )
    if landing.stuck:
        sc.notes += [f"{w.name} (pid {w.pid}) log tail:\n{w.tail(25)}" for w in sc.env.live_workers()]
        raise AssertionError(
            f"{what}: partitions did not land their records within {bound_s:.0f}s: {landing.describe_stuck()}"
        )
    sc.notes.append(f"{what}: every partition landed within {landing.slowest_s}s")


def test_k_three_workers_start_together_repeatedly(scenario: ScenarioFactory) -> None:
    """Three workers started at the same moment while data flows, stopped, and started together again:
    every assignment of every round must be read. (Seen: a worker given five partitions never consumed
    them, said "Worker ready", and nobody reported their lag; intermittent, 2 of 7 starts.)"""
    with scenario("k_start_together", "three workers started at once while data flows, repeated") as sc:
        cfg = sc.config
        rounds = cfg.pick(3, 8)
        rate = cfg.pick(3000, 4000)
        per_loop = 12 * (SAMPLE_EVENTS["trades"] + SAMPLE_EVENTS["quotes"])
        loops = max(2, int(rate * 45 * rounds / per_loop))  # flowing through every round
        sc.start(workers=0)
        sc.replay(SAMPLE, "--loop", str(loops), "--instruments", "12", "--rate", str(rate))
        for i in range(rounds):
            with sc.fault(f"round {i + 1}/{rounds}: three workers started together"):
                workers = [sc.env.start_worker() for _ in range(3)]
                for worker in workers:
                    worker.wait_ready()
            check_landing(sc, f"round {i + 1}")
            if i < rounds - 1:
                for worker in workers:
                    if worker.terminate(60) is None:
                        sc.notes.append(f"{worker.name} ignored SIGTERM for 60s and was SIGKILLed")


def grow_topics(sc: Scenario, topics: list[str], partitions: int) -> None:
    """Add partitions to live source topics, as an operator does (kafka-topics --alter)."""
    admin = AdminClient({"bootstrap.servers": sc.env.bootstrap})
    futures = admin.create_partitions([NewPartitions(t, partitions) for t in topics], operation_timeout=30)
    for future in futures.values():
        future.result(60)


def test_l_partitions_added_to_live_source_topics(scenario: ScenarioFactory) -> None:
    """trades and quotes grown from 6 to 9 partitions while two workers land them, more data replayed, then a
    third worker joins. (Seen: every record of the new partitions stayed unread; the audit called it lake lag.)"""
    with scenario("l_partitions_added", "trades and quotes grown from 6 to 9 partitions mid-run") as sc:
        cfg = sc.config
        rate = cfg.pick(2000, 3000)
        sc.start(workers=2)
        # Two replays of different companies: each replay numbers its symbols from 1, so replaying the
        # same symbols twice would make every second event a (correctly rejected) duplicate.
        instruments = ("--instruments", "12", "--rate", str(rate))
        sc.replay(SAMPLE, "--symbols", "DVN,MWR", "--loop", str(cfg.pick(4, 12)), *instruments)
        sc.wait_landing(2000)
        env = sc.env
        grown = [env.topics["trades"], env.topics["quotes"]]
        with sc.fault("trades and quotes grown to 9 partitions; a new replay (BHP) spreads over them"):
            grow_topics(sc, grown, 9)
            grown_at = time.monotonic()
            sc.replay(SAMPLE, "--symbols", "BHP", "--loop", str(cfg.pick(1, 3)), *instruments)
        new = {(t, p) for t in grown for p in range(6, 9)}
        first: dict[tuple[str, int], float] = {}
        deadline = grown_at + LANDING_BOUND_S * 2
        while len(first) < len(new) and time.monotonic() < deadline:
            sc.tick()
            marks = bounded(env.marks, 30.0, {})
            for tp in new - set(first):
                if tp in marks:
                    first[tp] = round(time.monotonic() - grown_at, 1)
            time.sleep(1.0)
        sc.notes.append(f"first landed record of each new partition, seconds after the growth: {sorted(first.items())}")
        if len(first) < len(new):
            raise AssertionError(f"new partitions never landed: {sorted(new - set(first))}")
        with sc.fault("a third worker joins"):
            env.start_worker().wait_ready()
        check_landing(sc, "after the growth and the join")


def committed_offsets(sc: Scenario) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets (the next offset it reads) of the source partitions."""
    ends = sc.env.end_offsets()
    consumer = Consumer({"bootstrap.servers": sc.env.bootstrap, "group.id": sc.env.env["K2_APP_ID"]})
    try:
        found = consumer.committed([TopicPartition(t, p) for (t, p) in ends], timeout=30)
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()


def transactions_in_a_process(bootstrap: str, topic: str, frames: list[bytes], transactional_id: str) -> None:
    """A producer process that opens a transaction, writes ``frames`` and is killed before it commits:
    the broker aborts the transaction when its timeout (10 s) passes."""
    script = (
        "import os, sys, confluent_kafka as ck\n"
        "p = ck.Producer({'bootstrap.servers': sys.argv[1], 'transactional.id': sys.argv[3],"
        " 'transaction.timeout.ms': 10000})\n"
        "p.init_transactions(30); p.begin_transaction()\n"
        "for line in sys.stdin.buffer.read().split(b'\\n'):\n"
        "    if line: p.produce(sys.argv[2], key=b'TXO', value=bytes.fromhex(line.decode()))\n"
        "assert p.flush(30) == 0\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, bootstrap, topic, transactional_id],
        input=b"\n".join(f.hex().encode() for f in frames),
        timeout=120,
        check=False,
    )


def test_m_transactional_producer_commits_aborts_and_times_out(scenario: ScenarioFactory) -> None:
    """A producer writes valid trades in Kafka transactions beside the replay: three committed, three aborted,
    and one left open that the broker aborts on its timeout. Only the committed ones may land; the commit
    markers are neither lag nor a hole (seen: aborted trades landed as rows, and a marker left a partition at
    a lag of 2 for good, failing readiness)."""
    with scenario("m_transactions", "transactions committed, aborted and timed out beside a replay") as sc:
        sc.start(workers=1)
        env = sc.env
        topic = env.topics["trades"]
        registry = Registry(env.stack.schema_registry_url)
        schema_id, schema = registry.latest(env.subject(topic))
        sc.replay(SAMPLE, "--loop", "2", "--rate", "1000")
        sc.wait_landing(1000)
        tx = make_producer(
            env.bootstrap, **{"transactional.id": f"k2-faults-{env.run_id}", "transaction.timeout.ms": 10000}
        )
        tx.init_transactions(30)
        aborted: list[tuple[str, int, int]] = []
        per = 50
        numbers = {"TXC": 0, "TXA": 0}

        def batch(symbol: str) -> list[bytes]:
            out = []
            for _ in range(per):
                numbers[symbol] += 1
                out.append(encode(schema_id, schema, trade(symbol, numbers[symbol])))
            return out

        with sc.fault("3 transactions committed, 3 aborted, 1 left open until the broker aborts it"):
            for outcome in ("commit", "abort", "commit", "abort", "commit", "abort"):
                symbol = "TXC" if outcome == "commit" else "TXA"
                tx.begin_transaction()
                for frame in batch(symbol):
                    tx.produce(
                        topic,
                        key=symbol.encode(),
                        value=frame,
                        on_delivery=lambda err, msg, outcome=outcome: (
                            aborted.append((msg.topic(), msg.partition(), msg.offset()))
                            if err is None and outcome == "abort"
                            else None
                        ),
                    )
                tx.flush(30)
                if outcome == "commit":
                    tx.commit_transaction(30)
                else:
                    tx.abort_transaction(30)
            transactions_in_a_process(
                env.bootstrap, topic, [encode(schema_id, schema, trade("TXO", n)) for n in range(1, per + 1)],
                f"k2-faults-{env.run_id}-open",
            )  # fmt: skip
            sc.sleep(15)  # the broker aborts the open one after 10 s
        sc.labels.update({pos: "aborted transaction" for pos in aborted})
        sc.notes.append(f"{len(aborted)} records of aborted transactions (and {per} of the timed-out one)")
        sc.wait_replays()
        deadline = time.monotonic() + LANDING_BOUND_S
        behind: dict[tuple[str, int], int] = {}
        while time.monotonic() < deadline:
            sc.tick()
            ends = env.end_offsets()
            committed = bounded(lambda: committed_offsets(sc), 30.0, {})
            behind = {tp: end - committed.get(tp, 0) for tp, end in ends.items() if end > committed.get(tp, 0)}
            if not behind:
                break
            time.sleep(2.0)
        if behind:
            raise AssertionError(f"the group's committed offsets stay behind the end (markers as lag?): {behind}")
        sc.notes.append("the group's committed offsets reached the end of every partition, markers included")


def test_n_worker_frozen_past_its_session(scenario: ScenarioFactory) -> None:
    """One of two workers is frozen (SIGSTOP) past its session timeout, at seeded moments while it holds
    buffered rows and commits to Iceberg every second, then thawed: the group moves its partitions, the
    thawed zombie must not land or commit anything twice, and everything lands."""
    with scenario("n_frozen_worker", "a worker SIGSTOPped past its session timeout, then thawed") as sc:
        cfg = sc.config
        freezes = cfg.pick(2, 6)
        sc.start(workers=2)
        sc.replay(SAMPLE, "--loop", str(cfg.pick(4, 12)), "--instruments", "12", "--rate", str(cfg.pick(2000, 2500)))
        sc.wait_landing(2000)
        for i in range(freezes):
            live = sc.env.live_workers()
            victim = live[sc.rng.randrange(len(live))]
            sc.sleep(sc.rng.uniform(0.0, 3.0))
            with sc.fault(f"freeze {i + 1}/{freezes}: {victim.name} SIGSTOPped for 25 s (session 15 s), thawed"):
                os.kill(victim.pid, signal.SIGSTOP)
                try:
                    sc.sleep(25)
                finally:
                    os.kill(victim.pid, signal.SIGCONT)
            check_landing(sc, f"after freeze {i + 1}")
