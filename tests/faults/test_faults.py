"""K2's law under faults, one scenario per test, judged from the outside.

The law: every offset of the trades, quotes and reference-data topics lands exactly once in
exactly one table (a market row or a reject), and every landed value equals what was
produced. Each scenario runs real processes on the local stack (``k2 init``, ``k2 replay``,
``faust -A k2.app worker``), does its fault to a process or a service, and ends in
:meth:`Scenario.conclude`: bounded waits, the law and the values checked from Kafka and the
lake, one report line (printed and appended to ``var/faults/report.json``).

``make test`` runs the short version (a few events, a few faults); ``make test-faults``
(``K2_FAULTS_LONG=1``) the long one. The scenarios are the same; only their sizes differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka.schema_registry import Schema

from tests.faults.config import SAMPLE, SAMPLE_EVENTS, Config
from tests.faults.law import check_law
from tests.faults.poison import KINDS, PoisonGenerator, mix, produce
from tests.faults.scenario import Scenario, ScenarioFactory
from tests.faults.source import Registry, SourceRecord, encode, make_producer, read_topics, trade
from tests.faults.values import check_values

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.rest, pytest.mark.timeout(7200)]

SAMPLE_TOTAL = sum(SAMPLE_EVENTS.values())


def loops_rate(config: Config, short: tuple[int, int], long: tuple[int, int]) -> list[str]:
    loops, rate = config.pick(short, long)
    return ["--loop", str(loops), "--rate", str(rate)]


# --------------------------------------------------------------------------- the control


def test_control_clean_run_passes_and_planted_faults_are_caught(scenario: ScenarioFactory) -> None:
    """No fault: the suite must pass a clean run, and must name a row it did not see and a row seen
    twice when they are planted in the lake afterwards (a check that cannot fail proves nothing)."""
    with scenario("control", "no fault; then one row deleted, one doubled, one altered in the lake") as sc:
        sc.start(workers=1)
        sc.replay(SAMPLE)

    env = sc.env
    source = read_topics(env.bootstrap, env.end_offsets())
    table = env.catalog().load_table("market_data.trades")
    rows = table.scan(row_filter="kafka_partition == 0", limit=2).to_arrow()
    victim, twin = rows.slice(0, 1), rows.slice(1, 1)
    victim_offset, twin_offset = victim["kafka_offset"][0].as_py(), twin["kafka_offset"][0].as_py()
    table.delete(f"kafka_partition == 0 and kafka_offset == {victim_offset}")
    index = twin.schema.get_field_index("price")
    wrong_price = pa.array([twin["price"][0].as_py() + Decimal("0.000001")], twin.schema.field(index).type)
    table.append(twin.set_column(index, twin.schema.field(index), wrong_price))  # a second row, one tick off
    law = check_law(env, source, sc.config.law)
    topic = env.topics["trades"]
    assert not law.holds
    assert law.missing == {f"{topic}/0": [[victim_offset, victim_offset]]}
    assert law.doubled == {f"{topic}/0": [[twin_offset, twin_offset]]}
    values = check_values(env, source)
    assert values.mismatched == {f"{topic}/0": [[twin_offset, twin_offset]]}
    assert not values.holds
    if sc.config.law != "lake":  # k2 audit --values names the altered row too
        assert law.values_differ == {f"{topic}/0": [[twin_offset, twin_offset]]}


# --------------------------------------------------------------------------- bad input


def test_a_high_bit_schema_ids_at_partition_head(scenario: ScenarioFactory) -> None:
    """Three frames whose schema id has the high bit set (>= 2^31, e.g. 0x80000002) at offsets 0-2 of a
    trades partition, then the sample: the three are rejects with their bytes, the sample lands behind them."""
    title = "3 frames with schema id >= 2^31 at the head of trades/0, then the sample"
    with scenario("a_high_bit_schema_ids", title) as sc:
        sc.start(workers=1)
        env = sc.env
        registry = Registry(env.stack.schema_registry_url)
        schema_id, schema = registry.latest(env.subject(env.topics["trades"]))
        body = encode(schema_id, schema, trade("BHP", 1))[5:]
        producer = make_producer(env.bootstrap)
        sc.flow_started()
        with sc.fault("3 frames with schema ids 0x80000000, 0x80000002, 0xFFFFFFFF at trades/0 offsets 0-2"):
            for bad_id in (0x80000000, 0x80000002, 0xFFFFFFFF):
                producer.produce(
                    env.topics["trades"], key=b"BHP", value=b"\x00" + bad_id.to_bytes(4, "big") + body, partition=0
                )
            assert producer.flush(30) == 0
        sc.expectations.update({(env.topics["trades"], 0, o): "reject" for o in range(3)})
        sc.labels.update({(env.topics["trades"], 0, o): "poison:high_bit_schema_id" for o in range(3)})
        sc.replay(SAMPLE, "--loop", str(sc.config.pick(1, 3)))


def poison_flood(sc: Scenario, weights: Mapping[str, float], *, high_bit_ids: bool = True) -> None:
    """Replay the sample into staging topics, mix poison into it at seeded positions, and produce the mix
    into the scenario's topics while a worker consumes them."""
    count = sc.config.pick(20_000, 120_000)
    huge = sc.config.pick(2, 5)
    loops = sc.config.pick(2, 5)
    # The replay goes to staging topics first, so that the mix (and every offset of it) follows the seed.
    stage = sc.side_deployment("stage")
    stage.k2("init", "--skip-tables")
    stage.k2("replay", str(SAMPLE), "--loop", str(loops), "--no-progress")
    staged_records = read_topics(stage.bootstrap, stage.end_offsets())
    sc.start(workers=1)
    env = sc.env
    registry = Registry(env.stack.schema_registry_url)
    for kind in ("trades", "quotes", "reference"):
        staged_ids = registry.subject_ids(stage.subject(stage.topics[kind]))
        assert staged_ids <= registry.subject_ids(env.subject(env.topics[kind])), "staging must share schema ids"
    staged: dict[tuple[str, int], list[SourceRecord]] = {}
    for record in staged_records.values():
        staged.setdefault((record.topic, record.partition), []).append(record)
    targets = {stage.topics[k]: env.topics[k] for k in ("trades", "quotes", "reference")}
    poisoned = [env.topics["trades"], env.topics["quotes"]]
    generator = PoisonGenerator(sc.rng, registry, {t: env.subject(t) for t in poisoned}, high_bit_ids=high_bit_ids)
    partitions = {t: env.partitions(t) for t in poisoned}
    outgoing = mix(staged, targets, poisoned, count, huge, generator, partitions, weights)
    sc.flow_started()
    with sc.fault(f"{count} poison frames ({huge} of 1 MB) mixed into {len(staged_records)} replayed events"):
        mixed = produce(env.bootstrap, outgoing)
    sc.expectations.update(mixed.expectations)
    sc.labels.update({pos: f"poison:{p.kind}" for pos, p in mixed.poison_at.items()})
    sc.notes.append(f"poison by kind: {dict(mixed.kinds.most_common())}; replayed {mixed.replayed}")
    sc.notes.append(
        "poison that still decodes (flipped bits, either row or reject): "
        f"{sum(1 for e in mixed.expectations.values() if e == 'either')}"
    )


def test_b_poison_flood_mixed_into_a_replay(scenario: ScenarioFactory) -> None:
    """A replay of the sample with poison at seeded positions of every trades and quotes partition
    (>= 100,000 frames in the long version): random bytes, wrong magic, high-bit schema ids, truncated
    bodies, flipped bits, empty values, tombstones and a few 1 MB values. Each poison frame must be a
    reject with its bytes untouched, each replayed event a row equal to its source."""
    with scenario("b_poison_flood", "poison frames mixed into a replay, every kind") as sc:
        poison_flood(sc, KINDS)


def test_b2_poison_flood_without_high_bit_schema_ids(scenario: ScenarioFactory) -> None:
    """The same flood without high-bit schema ids, not even by chance (scenario a has those alone): what
    every other kind of poison does, so that one kind's failure cannot hide another's."""
    weights = {kind: share for kind, share in KINDS.items() if kind != "high_bit_schema_id"}
    with scenario("b2_poison_flood_no_high_bit", "the flood of b without any frame with a high-bit schema id") as sc:
        poison_flood(sc, weights, high_bit_ids=False)


# --------------------------------------------------------------------------- workers


def test_c_workers_join_and_leave_during_flow(scenario: ScenarioFactory) -> None:
    """One worker consumes a 20-loop replay of the sample; a second joins, then a third, then one leaves
    (SIGTERM): every rebalance hands partitions and their buffered chunks over. The long version goes
    round again (back to one worker, then up to three) until the replay is done."""
    with scenario("c_join_and_leave", "20-loop replay; a 2nd worker joins, a 3rd joins, one leaves") as sc:
        cfg = sc.config
        sc.start(workers=1)
        sc.replay(SAMPLE, "--loop", "20", "--rate", str(cfg.pick(3000, 1000)))
        total = 20 * (SAMPLE_EVENTS["trades"] + SAMPLE_EVENTS["quotes"])
        cycles = cfg.pick(1, 3)
        for cycle in range(cycles):
            share = cycle / cycles
            sc.wait_landing(int(total * (0.05 + 0.9 * share)))
            with sc.fault(f"cycle {cycle + 1}: a second worker joins"):
                sc.env.start_worker().wait_ready()
            sc.wait_landing(int(total * (0.15 + 0.9 * share)))
            with sc.fault(f"cycle {cycle + 1}: a third worker joins"):
                sc.env.start_worker().wait_ready()
            sc.sleep(cfg.pick(3, 8))
            leaving = sc.env.live_workers()[: 1 if cycle == cycles - 1 else 2]  # the oldest leave first
            for worker in leaving:
                with sc.fault(f"cycle {cycle + 1}: {worker.name} leaves (SIGTERM)"):
                    if worker.terminate(60) is None:
                        sc.notes.append(f"{worker.name} ignored SIGTERM for 60s and was SIGKILLed")


def test_d_sigkill_at_random_moments(scenario: ScenarioFactory) -> None:
    """SIGKILL the worker at seeded random moments of a replay and start a new one at once.

    Two kinds of moment. Uniform over the flow: whatever the worker was doing (starting, waiting out a
    dead member's session, restoring, consuming, flushing). And, in the long version, a random 0-8 s
    after a worker is ready and the lake has moved under it: a kill while it consumes and commits,
    which is where exactly-once is at stake (a killed member holds its partitions for its 60 s session,
    so these come one a minute or so). Each kill's fault line says what it hit."""
    with scenario("d_sigkill_chaos", "SIGKILL + immediate restart at seeded random moments of a replay") as sc:
        cfg = sc.config
        uniform_kills, ready_kills = cfg.pick((3, 0), (12, 10))
        loops, rate = cfg.pick((4, 450), (20, 100))
        flow_s = loops * (SAMPLE_EVENTS["trades"] + SAMPLE_EVENTS["quotes"]) / rate
        sc.stall_s = max(sc.stall_s, 180.0)  # every kill leaves a member whose 60 s session the group waits out
        sc.start(workers=1)
        replay = sc.replay(SAMPLE, "--loop", str(loops), "--rate", str(rate))
        window = cfg.pick(flow_s, 240.0)
        moments = sorted(sc.rng.uniform(2.0, window) for _ in range(uniform_kills))
        sc.notes.append(f"uniform kill moments (s into the flow): {[round(m, 1) for m in moments]}")
        total = uniform_kills + ready_kills
        landed_before = 0

        def kill(n: int, when: str) -> None:
            nonlocal landed_before
            victims = sc.env.live_workers()
            state = ", ".join(f"{w.name} {'ready' if w.ready() else 'starting'}" for w in victims) or "none alive"
            landed = sc.landed_rows()
            with sc.fault(
                f"kill {n}/{total} {when}: SIGKILL ({state}; lake +{landed - landed_before} offsets since the "
                "last kill), new worker started"
            ):
                for worker in victims:
                    worker.kill()
                sc.env.start_worker()
            landed_before = landed

        for i, moment in enumerate(moments):
            sc.sleep(max(0.0, moment - sc.now()))
            kill(i + 1, f"at +{moment:.1f}s")
        for j in range(ready_kills):
            if not replay.running():
                sc.notes.append(f"the replay ended after {uniform_kills + j} kills")
                break
            ready_at = sc.wait_worker_ready()
            sc.wait_landing(sc.landed_rows() + 1)
            delay = sc.rng.uniform(0.0, 8.0)
            sc.sleep(delay)
            kill(uniform_kills + j + 1, f"{sc.now() - ready_at:.1f}s after a worker was ready (+{delay:.1f}s)")


def test_e_sigterm_mid_stream_then_restart(scenario: ScenarioFactory) -> None:
    """SIGTERM the worker mid-stream (a deploy, a scale-in), wait for it to exit, start a new one."""
    with scenario("e_sigterm_restart", "SIGTERM mid-stream, wait for the exit, restart") as sc:
        cfg = sc.config
        loops, rate = cfg.pick((2, 600), (10, 300))
        restarts = cfg.pick(1, 5)
        total = loops * (SAMPLE_EVENTS["trades"] + SAMPLE_EVENTS["quotes"])
        sc.start(workers=1)
        sc.replay(SAMPLE, "--loop", str(loops), "--rate", str(rate))
        for i in range(restarts):
            sc.wait_landing(int(total * (0.1 + 0.7 * i / restarts)))
            with sc.fault(f"SIGTERM {i + 1}/{restarts}, then a new worker"):
                for worker in sc.env.live_workers():
                    took = worker.terminate(90)
                    sc.notes.append(
                        f"{worker.name} exited {took:.1f}s after SIGTERM"
                        if took is not None
                        else f"{worker.name} ignored SIGTERM for 90s and was SIGKILLed"
                    )
                sc.env.start_worker().wait_ready()


# --------------------------------------------------------------------------- services


def test_f_registry_outage_during_flow(scenario: ScenarioFactory) -> None:
    """The registry goes away mid-stream while events arrive under a schema id the worker has not seen
    yet (a new BACKWARD-compatible trade version) and under an id nobody registered. The outage must
    be waited out: new-version events land as rows, equal to their source; none is rejected for it."""
    title = "registry stopped mid-stream; events with a not-yet-seen schema id meanwhile"
    with scenario("f_registry_outage", title) as sc:
        cfg = sc.config
        sc.start(workers=1)
        env = sc.env
        subject = env.subject(env.topics["trades"])
        client = Registry(env.stack.schema_registry_url).client
        tree = json.loads(client.get_latest_version(subject).schema.schema_str)
        tree["fields"].append({"name": "trade_id", "type": ["null", "string"], "default": None})
        v2_id = client.register_schema(subject, Schema(json.dumps(tree), "AVRO"))
        v2 = fastavro.parse_schema(tree)
        sc.replay(SAMPLE, *loops_rate(cfg, (2, 600), (6, 300)))
        sc.wait_landing(1000)
        down_s = cfg.pick(20, 60)
        producer = make_producer(env.bootstrap)
        with sc.fault(f"registry stopped for {down_s}s; new-version and unknown-id frames meanwhile"):
            sc.services.stop("registry")
            for i in range(1, 51):
                producer.produce(
                    env.topics["trades"], key=b"FLT", value=encode(v2_id, v2, trade("FLT", i, trade_id=f"T{i}"))
                )
            unknown = encode(987_654, v2, trade("UNK", 1, trade_id="U"))  # an id nobody registered
            producer.produce(env.topics["trades"], key=b"UNK", value=unknown)
            assert producer.flush(30) == 0
            if cfg.long:  # a worker (re)starting during the outage must wait for the registry too
                for worker in env.live_workers():
                    worker.terminate(90)
                env.start_worker()
            sc.sleep(down_s)
            sc.services.start("registry")


def test_g_broker_restart_during_flow(scenario: ScenarioFactory) -> None:
    """The Kafka broker is stopped mid-stream and started again (its log on disk survives)."""
    with scenario("g_broker_restart", "Kafka broker stopped mid-stream, started again") as sc:
        cfg = sc.config
        sc.start(workers=1)
        sc.replay(SAMPLE, *loops_rate(cfg, (2, 600), (8, 300)))
        sc.wait_landing(1000)
        down_s = cfg.pick(5, 30)
        with sc.fault(f"broker down for {down_s}s"):
            sc.services.stop("kafka")
            sc.sleep(down_s)
            sc.services.start("kafka")


def test_h_rest_catalog_killed_then_restarted(scenario: ScenarioFactory) -> None:
    """The REST catalog is SIGKILLed mid-stream and started again (its state on disk survives)."""
    with scenario("h_rest_killed", "REST catalog SIGKILLed mid-stream, restarted") as sc:
        cfg = sc.config
        sc.start(workers=1)
        sc.replay(SAMPLE, *loops_rate(cfg, (2, 600), (8, 300)))
        sc.wait_landing(1000)
        down_s = cfg.pick(10, 45)
        with sc.fault(f"REST catalog killed, down for {down_s}s"):
            sc.services.stop("rest", kill=True)
            sc.sleep(down_s)
            sc.services.start("rest")


def test_i_rest_catalog_frozen_then_thawed(scenario: ScenarioFactory) -> None:
    """The REST catalog is frozen (SIGSTOP: connections hang, nothing answers) mid-stream, then thawed."""
    with scenario("i_rest_frozen", "REST catalog frozen (SIGSTOP) mid-stream, thawed (SIGCONT)") as sc:
        cfg = sc.config
        sc.start(workers=1)
        sc.replay(SAMPLE, *loops_rate(cfg, (2, 600), (8, 300)))
        sc.wait_landing(1000)
        frozen_s = cfg.pick(20, 120)
        with sc.fault(f"REST catalog frozen for {frozen_s}s"):
            sc.services.freeze("rest")
            sc.sleep(frozen_s)
            sc.services.thaw("rest")


def test_j_tables_recreated_under_a_running_worker(scenario: ScenarioFactory) -> None:
    """Every K2 table is dropped and created again (same schema, spec, order, properties, no rows) with
    pyiceberg while a worker lands. The law is over the lake as it is: the offsets landed before the
    drop must land again (Kafka still has them), the later ones once."""
    with scenario("j_tables_recreated", "all K2 tables dropped and re-created (empty) under a running worker") as sc:
        cfg = sc.config
        sc.start(workers=1)
        sc.replay(SAMPLE, *loops_rate(cfg, (2, 600), (8, 300)))
        sc.wait_landing(2000)
        with sc.fault("tables dropped and re-created"):
            recreated = sc.env.recreate_tables()
        sc.notes.append(f"re-created: {recreated}")


# --------------------------------------------------------------------------- recovery against uptime


def test_p_takeover_restores_the_buffer_not_the_uptime(scenario: ScenarioFactory) -> None:
    """Two workers under a steady high rate; one is SIGKILLed after 2 minutes (short) or after 5, 15 and 30
    (long, a new worker joining after each takeover). Each time the survivor restores the tables' changelogs
    and consumes again: the records it restores must stay within twice the buffer's bound however long the
    group has run, and the report gives them with the takeover time (kill to consuming, of which the
    rebalance waits out the dead member's session). Millions of events: the law is `k2 audit`'s."""
    with scenario(
        "p_takeover",
        "two workers at a high rate; SIGKILL one after minutes of flow; what the survivor restores, how fast",
        K2_FLUSH_INTERVAL_S="5",  # K2's default: 1 s (the suite's) would commit a few thousand snapshots more
        K2_SESSION_TIMEOUT_S="8",  # a dead member is noticed in 8 s (K2's default 15 s alone passes a 15 s takeover)
    ) as sc:
        cfg = sc.config
        sc.judge_rows = False
        kills_s = cfg.pick((120.0,), (300.0, 900.0, 1800.0))
        rate = cfg.pick(3000, 5000)
        instruments = 4  # 12 instruments: every partition of both topics busy
        per_pass = instruments * (SAMPLE_EVENTS["trades"] + SAMPLE_EVENTS["quotes"])
        loops = math.ceil(rate * (kills_s[-1] + 45) / per_pass)
        sc.start(workers=2)
        passes = ["--loop", str(loops), "--loop-step", "1", "--instruments", str(instruments)]
        sc.replay(SAMPLE, *passes, "--rate", str(rate))
        for at in kills_s:
            sc.sleep(max(0.0, at - sc.now()))
            victim, survivor = sc.env.live_workers()[:2]
            sc.kill_and_measure(victim, survivor)
            if at != kills_s[-1]:
                with sc.fault("a new worker joins (two again)"):
                    sc.env.start_worker().wait_ready()
