"""How fast ``k2 audit --values`` compares a big lake with Kafka, and in how much memory.

    .venv/bin/python bench/values_bench.py [--events 3000000] [--partitions 6] [--commit-rows 100000]
                                           [--reject-every 500] [--sample F] [--keep | --reuse RUN]

Needs the local stack (``python3 deploy/local/stack.py up``, the ``K2_*`` port variables as
for the tests). Sends ``--events`` trades and quotes (60/40, 24 instruments, every
``--reject-every``-th one junk bytes with a header) and a few companies to fresh topics with
confluent-kafka, and lands the same events into a fresh embedded (SQLite) lake with
pyiceberg directly, as K2 lands them (``k2.lake.arrow``, day partitions, sorted, offset
marks in each snapshot; ``--commit-rows`` events per commit): a worker would take longer
than the audit on this machine. Then runs ``k2 audit --values --json`` as a process of
its own and reports the value audit's own time and rate (from its JSON), the whole
command's wall time (the law audit included), its CPU seconds per record and its peak RSS
(``bench/procs.py``'s /proc meter). The audit must find the values equal: the bench fails
otherwise. ``--keep`` leaves the lake and topics (``var/bench-values/RUN``); ``--reuse RUN``
audits them again without loading (on a shared machine, at a quieter moment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from k2.avro.codec import encode
from k2.avro.registry import lookup_schema_id, registry_client
from k2.avro.schemas import CONTRACTS
from k2.catalog import default_catalog_properties
from k2.lake.arrow import companies_to_arrow, events_to_arrow, keep_last, rejects_to_arrow
from k2.lake.offsets import summary_properties
from k2.lake.records import BufferedEvent, RejectRecord
from k2.lake.schemas import COMPANIES, COMPANY_VERSIONS, QUOTES, REJECTS, TRADES
from k2.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.procs import Meter  # noqa: E402

BIN = Path(sys.executable).parent
T0 = 1_394_406_000_000  # 2014-03-09T23:00:00Z
SYMBOLS = [f"S{i:02d}" for i in range(24)]


def environment(run: str, var_dir: Path) -> dict[str, str]:
    port = os.environ.get("K2_KAFKA_PORT", "9092")
    registry = os.environ.get("K2_REGISTRY_PORT", "8081")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "PYICEBERG_"))}
    env.update(
        {
            "K2_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "K2_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{registry}/apis/ccompat/v7",
            "K2_TRADES_TOPIC": f"vb{run}.trades",
            "K2_QUOTES_TOPIC": f"vb{run}.quotes",
            "K2_REFERENCE_TOPIC": f"vb{run}.reference",
            "K2_REJECTS_TOPIC": f"vb{run}.rejects",
            "K2_APP_ID": f"k2-values-bench-{run}",
            "K2_VAR_DIR": str(var_dir),
        }
    )
    return env


def trade(i: int) -> dict[str, Any]:
    return {
        "symbol": SYMBOLS[i % 24], "company_id": i % 24 + 1, "exchange": "ASX", "exchange_timestamp": T0 + i * 7,
        "price": Decimal(1_000_000 + i % 9_000_000).scaleb(-6), "volume": 1 + i % 5000, "qualifiers": i % 3,
        "venue": "X" if i % 2 else "", "buyer_id": None if i % 5 else f"B{i % 97}",
        "ingestion_timestamp": T0 + i * 7 + 3, "sequence_number": i,
    }  # fmt: skip


def quote(i: int) -> dict[str, Any]:
    return {
        "symbol": SYMBOLS[i % 24], "company_id": i % 24 + 1, "exchange": "ASX", "exchange_timestamp": T0 + i * 7,
        "bid_price": Decimal(1_000_000 + i % 9_000_000).scaleb(-6), "bid_volume": i % 800,
        "ask_price": Decimal(1_000_100 + i % 9_000_000).scaleb(-6), "ask_volume": 1 + i % 900,
        "ingestion_timestamp": T0 + i * 7 + 3, "sequence_number": i,
    }  # fmt: skip


class Lake:
    """Events landed as K2 lands them, ``commit_rows`` at a time, marks in every snapshot."""

    def __init__(self, settings: Settings, commit_rows: int) -> None:
        from pyiceberg.catalog.sql import SqlCatalog

        self.catalog = SqlCatalog("k2", **default_catalog_properties(settings.var_dir))
        self.commit_rows = commit_rows
        self.events: dict[str, list[BufferedEvent]] = {TRADES: [], QUOTES: []}
        self.rejects: list[RejectRecord] = []
        self.marks: dict[str, dict[tuple[str, int], int]] = {TRADES: {}, QUOTES: {}, REJECTS: {}}

    def add(self, table: str, event: BufferedEvent) -> None:
        self.events[table].append(event)
        if len(self.events[table]) >= self.commit_rows:
            self.flush(table)

    def flush(self, table: str) -> None:
        events = self.events[table]
        if events:
            for e in events:
                self.marks[table][(e.topic, e.partition)] = e.offset
            self._append(table, events_to_arrow(table, events))
            self.events[table] = []
        if self.rejects:
            for r in self.rejects:
                self.marks[REJECTS][(r.topic, r.partition)] = r.offset
            self._append(REJECTS, rejects_to_arrow(self.rejects))
            self.rejects = []

    def _append(self, table: str, rows: Any) -> None:
        props = summary_properties(self.marks[table], uuid.uuid4().hex, "values-bench")
        self.catalog.load_table(table).append(rows, snapshot_properties=props)

    def companies(self, events: list[BufferedEvent]) -> None:
        rows = companies_to_arrow(events, T0)
        marks = {(e.topic, e.partition): e.offset for e in events}
        props = summary_properties(marks, uuid.uuid4().hex, "values-bench")
        self.catalog.load_table(COMPANY_VERSIONS).append(rows, snapshot_properties=props)
        self.catalog.load_table(COMPANIES).append(keep_last(rows, ["company_id"]), snapshot_properties=props)


def load(settings: Settings, events: int, partitions: int, commit_rows: int, reject_every: int) -> None:
    """Send the events to Kafka and land them in the lake, offset for offset."""
    client = registry_client(settings)
    ids = {
        name: lookup_schema_id(client, CONTRACTS[name].subject(settings), CONTRACTS[name].schema_str)
        for name in CONTRACTS
    }
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    lake = Lake(settings, commit_rows)
    next_offset: dict[tuple[str, int], int] = {}
    plan = [
        (settings.trades_topic, TRADES, "trade", trade),
        (settings.quotes_topic, QUOTES, "quote", quote),
    ]
    for i in range(events):
        topic, table, name, make = plan[0] if i % 5 < 3 else plan[1]
        partition = i % partitions
        offset = next_offset.get((topic, partition), 0)
        next_offset[(topic, partition)] = offset + 1
        if i % reject_every == reject_every - 1:
            value = b"junk %d" % i
            headers = [("bench", b"%d" % i)]
            producer.produce(topic, value=value, key=b"junk", partition=partition, headers=headers)
            lake.rejects.append(
                RejectRecord(topic, partition, offset, "not_confluent_framed", "junk", T0, None, b"junk", value,
                             "bench", tuple(headers))
            )  # fmt: skip
            continue
        record = make(i)
        value = encode(ids[name] or 0, CONTRACTS[name].parsed, record)
        _produce(producer, topic, value, record["symbol"].encode(), partition)
        lake.add(table, BufferedEvent(topic, partition, offset, record))
    for table in (TRADES, QUOTES):
        lake.flush(table)
    companies = []
    for c in range(10):
        record = {
            "company_id": c + 1, "symbol": SYMBOLS[c], "company_name": f"Company {c}", "isin": f"AU{c:010d}",
            "start_date": "2001-02-03", "end_date": None if c % 3 else "2014-01-31",
        }  # fmt: skip
        _produce(
            producer,
            settings.reference_topic,
            encode(ids["reference_data"] or 0, CONTRACTS["reference_data"].parsed, record),
            b"%d" % c,
            0,
        )
        companies.append(BufferedEvent(settings.reference_topic, 0, c, record))
    lake.companies(companies)
    if producer.flush(120):
        raise SystemExit("the producer did not deliver everything")


def _produce(producer: Producer, topic: str, value: bytes, key: bytes, partition: int) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, partition=partition)
            return
        except BufferError:
            producer.poll(0.1)


def audit(env: dict[str, str], out: Path, *args: str) -> tuple[dict[str, Any], float, Meter, int]:
    """``k2 audit --values --json ARGS`` in a session of its own: its report, wall seconds, meter, exit code.

    The meter reads every process of the session from /proc twice a second (the audit, and the
    forkserver and decoding workers it starts): CPU seconds of them all, and their peak RSS.
    """
    meter = Meter()
    started = time.perf_counter()
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [str(BIN / "k2"), "audit", "--values", "--json", *args],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            start_new_session=True,
        )
        meter.watch(proc.pid)
        while proc.poll() is None:
            meter.sample()
            time.sleep(0.5)
    wall = time.perf_counter() - started
    return json.loads(out.read_text()), wall, meter, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--commit-rows", type=int, default=100_000)
    parser.add_argument("--reject-every", type=int, default=500)
    parser.add_argument("--sample", type=float, default=None, help="also time --sample F")
    parser.add_argument("--keep", action="store_true", help="keep the lake and the topics (var/bench-values/RUN)")
    parser.add_argument("--reuse", metavar="RUN", help="audit the lake and topics of a kept run again, no loading")
    args = parser.parse_args()

    run = args.reuse or uuid.uuid4().hex[:8]
    var_dir = ROOT / "var" / "bench-values" / run
    env = environment(run, var_dir)
    if args.reuse:
        args.keep = True
    else:
        env["K2_TRADES_PARTITIONS"] = env["K2_QUOTES_PARTITIONS"] = str(args.partitions)
        subprocess.run([str(BIN / "k2"), "init"], cwd=ROOT, env=env, check=True, capture_output=True)
        settings = Settings(**{k[3:].lower(): v for k, v in env.items() if k.startswith("K2_")})  # type: ignore[arg-type]
        started = time.perf_counter()
        load(settings, args.events, args.partitions, args.commit_rows, args.reject_every)
        took = time.perf_counter() - started
        print(f"run {run}: loaded {args.events:,} events into Kafka and the lake in {took:.0f} s")
    try:
        runs: list[list[str]] = [[]]
        if args.sample:
            runs.append([f"--sample={args.sample}"])
        for extra in runs:
            report, wall, meter, code = audit(env, var_dir / "audit.json", *extra)
            values = report["values"]
            n = values["records_read"]
            print(
                f"k2 audit --values {' '.join(extra)}: exit {code}; {n:,} records compared in "
                f"{values['elapsed_s']:.1f} s = {n / values['elapsed_s']:,.0f} records/s, on "
                f"{values['cpu_s']:.1f} s of CPU = {values['cpu_s'] / n * 1e6:.1f} us per record "
                f"({n / values['cpu_s']:,.0f} records per CPU second); the whole command (law audit and "
                f"start-up included) {wall:.1f} s, {meter.cpu_s:.1f} CPU s over {meter.processes} process(es); "
                f"peak RSS {meter.rss_max_mib:,.0f} MiB"
            )
            print(f"  {values['summary']}")
            if code != 0:
                raise SystemExit(f"the audit did not find the lake equal:\n{json.dumps(report)[:4000]}")
    finally:
        if not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
