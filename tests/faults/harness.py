"""The fault suite's harness: faults on the stack and on workers, the law, the values, the report.

K2's law: every offset of the three source topics lands exactly once in exactly one
table (a market row or a reject). The suite proves or disproves it from the outside
only: K2 runs as users run it (``k2 init``, ``k2 replay``, ``faust -A k2.app worker``
processes), faults are done to processes and services, and the verdict comes from Kafka
and the lake. Nothing here imports ``k2``, so the suite judges a rewritten worker the
same way; the one exception is :func:`check_law`, the single place the law is decided:
by default (``K2_FAULTS_LAW=both``) it reads the rows itself and runs the ``k2 audit``
command, and both must hold; ``lake`` reads the rows and asks ``tests/integration/law.py``
(which needs K2's settings object); ``audit`` runs the command alone.

A scenario (see ``tests/faults/test_faults.py``) is a ``with`` block; leaving it concludes::

    def test_something(scenario: ScenarioFactory) -> None:
        with scenario("x_something", "what it does, in a line") as sc:
            sc.start(workers=1)                      # fresh tables, k2 init, a worker
            sc.replay(SAMPLE, "--loop", "3", "--rate", "400")
            sc.wait_landing(1000)                    # the flow is reaching the lake
            with sc.fault("registry down"):          # timestamps for the report
                sc.services.stop("registry")
                sc.sleep(20)
                sc.services.start("registry")
        # here: waited (bounded), judged (law and values), reported; the test failed if anything was wrong

Poison a scenario makes goes into ``sc.expectations`` (what each position must become) and
``sc.labels`` (how the report counts lost or doubled positions).

Every wait is bounded and ends in a verdict: a lake that stops moving for
``K2_FAULTS_STALL_S`` seconds while behind Kafka is a stall, which fails the scenario.
Times are measured and reported, never asserted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka.admin import AdminClient
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

from tests.faults.source import TP, Position, Registry, end_offsets, read_topics

__all__ = [
    "SAMPLE",
    "SAMPLE_EVENTS",
    "Config",
    "Deployment",
    "LawVerdict",
    "Scenario",
    "ScenarioReport",
    "Services",
    "ValueVerdict",
    "Worker",
    "check_law",
    "check_values",
    "ranges",
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.py"
SAMPLE = ROOT / "data" / "sample"
#: Events in one pass of data/sample: trades, quotes, reference rows.
SAMPLE_EVENTS = {"trades": 2243, "quotes": 2609, "reference": 4}

# K2's tables and their lineage columns: the published contract (README), not K2's code.
TRADES, QUOTES = "market_data.trades", "market_data.quotes"
COMPANIES, COMPANY_VERSIONS = "reference_data.companies", "reference_data.company_versions"
REJECTS, GAPS = "market_data.rejects", "market_data.sequence_gaps"
NAMESPACES = ("market_data", "reference_data")
OFFSETS_PREFIX = "k2.offsets."

T = TypeVar("T")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    """How the suite runs, from the environment: short (inside ``make test``) or long (``make test-faults``)."""

    long: bool
    seed: int
    report_path: Path
    law: str
    stall_s: float
    settle_s: float
    cap_s: float

    @classmethod
    def from_env(cls) -> Config:
        long = os.environ.get("K2_FAULTS_LONG", "") not in ("", "0")
        law = os.environ.get("K2_FAULTS_LAW", "both")
        if law not in ("lake", "audit", "both"):
            raise ValueError(f"K2_FAULTS_LAW={law!r}: expected lake, audit or both")
        return cls(
            long=long,
            seed=int(os.environ.get("K2_FAULTS_SEED", "20140310")),
            report_path=Path(os.environ.get("K2_FAULTS_REPORT", ROOT / "var" / "faults" / "report.json")),
            law=law,
            # K2's own alert (K2IcebergNoCommit) waits 300 s; two minutes without progress while behind is
            # a stall here. Scenarios that SIGKILL raise it (a dead member's 60 s session is waited out).
            stall_s=float(os.environ.get("K2_FAULTS_STALL_S", "120")),
            settle_s=float(os.environ.get("K2_FAULTS_SETTLE_S", "30")),
            cap_s=float(os.environ.get("K2_FAULTS_CAP_S", "2400" if long else "900")),
        )

    def pick(self, short: T, long: T) -> T:
        """The short or the long value of a scenario parameter."""
        return long if self.long else short

    @property
    def version(self) -> str:
        return "long" if self.long else "short"


# --------------------------------------------------------------------------- offset ranges


def ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as inclusive ``[first, last]`` runs: ``[0, 1, 2, 7]`` -> ``[[0, 2], [7, 7]]``."""
    out: list[list[int]] = []
    for offset in sorted(set(offsets)):
        if out and offset == out[-1][1] + 1:
            out[-1][1] = offset
        else:
            out.append([offset, offset])
    return out


def position_ranges(positions: Iterable[Position]) -> dict[str, list[list[int]]]:
    """Positions as ``{"topic/partition": [[first, last], ...]}``, the form every report uses."""
    by_tp: dict[str, list[int]] = {}
    for topic, partition, offset in positions:
        by_tp.setdefault(f"{topic}/{partition}", []).append(offset)
    return {tp: ranges(offs) for tp, offs in sorted(by_tp.items())}


def format_ranges(found: Mapping[str, list[list[int]]], limit: int = 12) -> str:
    """``t.trades/0:0-2,7 t.quotes/3:10-19`` (at most ``limit`` runs, then how many more)."""
    parts: list[str] = []
    shown = total = 0
    for tp, runs in found.items():
        total += len(runs)
        keep = runs[: max(0, limit - shown)]
        shown += len(keep)
        if keep:
            parts.append(f"{tp}:" + ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in keep))
    text = " ".join(parts) or "none"
    return text + (f" (+{total - shown} more runs)" if total > shown else "")


def _count(found: Mapping[str, list[list[int]]]) -> int:
    return sum(b - a + 1 for runs in found.values() for a, b in runs)


def _bounded(fn: Callable[[], T], timeout_s: float, default: T) -> T:
    """``fn()`` in a thread, or ``default`` after ``timeout_s`` (a frozen server must not hang the suite)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=timeout_s)
    except Exception:
        return default
    finally:
        pool.shutdown(wait=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- service faults


class Services:
    """Faults on the test stack, done by ``deploy/local/stack.py`` (the script ``make stack-up`` runs).

    Every service touched is brought back by :meth:`heal` when a scenario ends, even when it fails half-way.
    """

    def __init__(self) -> None:
        self.touched: set[str] = set()
        self.frozen: set[str] = set()

    def _run(self, *args: str, timeout_s: float = 300.0) -> str:
        proc = subprocess.run(
            [sys.executable, str(STACK_SCRIPT), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"stack.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def stop(self, name: str, *, kill: bool = False) -> None:
        """SIGTERM (``kill``: SIGKILL) the service; it stays down until :meth:`start`."""
        self.touched.add(name)
        self._run("stop", name, *(["--kill"] if kill else []))

    def start(self, name: str) -> None:
        """Start the service and wait until it is healthy."""
        self._run("start", name)

    def restart(self, name: str, *, kill: bool = False, down_s: float = 0.0) -> None:
        self.stop(name, kill=kill)
        time.sleep(down_s)
        self.start(name)

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets (connections are accepted by the kernel) but answers nothing."""
        self.touched.add(name)
        self.frozen.add(name)
        self._run("freeze", name)

    def thaw(self, name: str) -> None:
        self._run("thaw", name)
        self.frozen.discard(name)

    def heal(self) -> None:
        """Thaw what is frozen and start what is down (the next scenario needs the whole stack)."""
        for name in sorted(self.frozen):
            with contextlib.suppress(RuntimeError):
                self.thaw(name)
        if self.touched:
            self._run("up", "--profile", "rest")
        self.touched.clear()


# --------------------------------------------------------------------------- workers


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a live process (VmHWM, kB), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Worker:
    """One ``faust -A k2.app worker`` process of a deployment, with its own web port and log."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.log = log
        self.port = free_port()
        self.env = dict(env, K2_WEB_PORT=str(self.port))
        self.started_at = time.monotonic()
        self.expected_exit = False
        self.reported = False  # a crash already noticed by the scenario
        self.peak_rss_kb = 0
        cwd.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "faust"), "-A", "k2.app", "worker", "-l", "info"],
                cwd=cwd,  # faust keeps an <app id>-data folder in its working directory
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> None:
        kb = vm_hwm_kb(self.pid) if self.alive() else None
        if kb is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, kb)

    def ready(self) -> bool:
        return "Worker ready" in self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 240.0) -> float:
        """Seconds until the worker said "Worker ready"; raises if it exits or takes over ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.tail()}")
            if self.ready():
                return time.monotonic() - self.started_at
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready after {timeout_s}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def crash_reason(self) -> str:
        """The last error-looking line of the log (what a crash report names)."""
        lines = self.log.read_text(errors="replace").splitlines()
        for line in reversed(lines[-400:]):
            if re.search(r"Error|Exception|Traceback|CRITICAL", line):
                return line.strip()[-300:]
        return (lines[-1].strip() if lines else "")[-300:]

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        self.sample_rss()
        self.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> float | None:
        """SIGTERM and wait: seconds the worker took to exit, or None when it had to be SIGKILLed."""
        self.sample_rss()
        self.expected_exit = True
        if not self.alive():
            return 0.0
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
            return time.monotonic() - began
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return None


class RssMonitor:
    """Polls every worker's VmHWM twice a second, so a worker's peak is known even after it dies."""

    def __init__(self, workers: Callable[[], list[Worker]]) -> None:
        self._workers = workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k2-faults-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for worker in list(self._workers()):
                worker.sample_rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- a deployment


class Replay:
    """A ``k2 replay`` process running in the background."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args = args
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "k2"), "replay", *args, "--no-progress"],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait(30)


class Deployment:
    """An isolated K2 on the shared stack: its own topics, consumer group, var dir and worker ports.

    The REST catalog is shared, and K2's table names are fixed, so scenarios run one at a
    time and each starts from freshly created tables.
    """

    def __init__(self, stack: Any, tmp: Path, **overrides: str) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.stack = stack
        self.tmp = tmp
        self.cwd = tmp / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.topics = {
            "trades": f"f{self.run_id}.trades",
            "quotes": f"f{self.run_id}.quotes",
            "reference": f"f{self.run_id}.reference",
            "rejects": f"f{self.run_id}.rejects",
        }
        k2 = {
            "K2_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "K2_SCHEMA_REGISTRY_URL": stack.schema_registry_url,
            "K2_TRADES_TOPIC": self.topics["trades"],
            "K2_QUOTES_TOPIC": self.topics["quotes"],
            "K2_REFERENCE_TOPIC": self.topics["reference"],
            "K2_REJECTS_TOPIC": self.topics["rejects"],
            "K2_APP_ID": f"k2-faults-{self.run_id}",
            "K2_VAR_DIR": str(tmp / "var"),
            "K2_FLUSH_INTERVAL_S": "1",
            **overrides,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "PYICEBERG_"))}
        env.update(k2)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        # The code under test is the tree these tests live in, whatever the venv's editable install points at.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        for key, value in stack.pyiceberg_properties().items():
            env[f"PYICEBERG_CATALOG__K2__{key.upper().replace('.', '__').replace('-', '_')}"] = value
        self.env = env
        self.workers: list[Worker] = []
        self.replays: list[Replay] = []
        self._catalog: Catalog | None = None

    # Topics and commands -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return str(self.stack.kafka_bootstrap)

    @property
    def source_topics(self) -> tuple[str, str, str]:
        return (self.topics["trades"], self.topics["quotes"], self.topics["reference"])

    @staticmethod
    def subject(topic: str) -> str:
        """Registry subject of a topic's values (topic-name strategy, as K2 registers them)."""
        return f"{topic}-value"

    def k2(self, *args: str, check: bool = True, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "k2"), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"k2 {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def replay(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Replay:
        replay = Replay(
            [str(a) for a in args], dict(env or self.env), self.cwd, self.tmp / f"replay-{len(self.replays)}.log"
        )
        self.replays.append(replay)
        return replay

    def start_worker(self) -> Worker:
        worker = Worker(f"w{len(self.workers)}", self.env, self.cwd, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def partitions(self, topic: str) -> int:
        return sum(1 for (t, _p) in self.end_offsets((topic,)) if t == topic)

    def end_offsets(self, topics: Iterable[str] | None = None) -> dict[TP, int]:
        return end_offsets(self.bootstrap, topics or self.source_topics)

    # The lake -------------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog("k2", **self.stack.pyiceberg_properties())
        return self._catalog

    def tables(self) -> list[str]:
        """Every table in K2's namespaces."""
        out = []
        for namespace in NAMESPACES:
            with contextlib.suppress(NoSuchNamespaceError):
                out += [".".join(ident) for ident in self.catalog().list_tables(namespace)]
        return sorted(out)

    def drop_tables(self) -> None:
        """Purge K2's tables (a previous scenario's rows must not count for this one)."""
        for name in self.tables():
            with contextlib.suppress(NoSuchTableError):
                self.catalog().purge_table(name)

    def recreate_tables(self) -> list[str]:
        """Drop every K2 table and create it again, empty, with the same schema, spec, order and properties."""
        done = []
        catalog = self.catalog()
        for name in self.tables():
            table = catalog.load_table(name)
            schema, spec, order, props = table.schema(), table.spec(), table.sort_order(), dict(table.properties)
            catalog.drop_table(name)
            catalog.create_table(name, schema=schema, partition_spec=spec, sort_order=order, properties=props)
            done.append(name)
        return done

    def marks(self) -> dict[TP, int]:
        """How far the lake says it got: the highest ``k2.offsets.<topic>.<partition>`` of any table's newest
        K2 snapshot (README, Guarantees). A progress signal only; the law is decided from the rows."""
        out: dict[TP, int] = {}
        catalog = self.catalog()
        for name in self.tables():
            table = catalog.load_table(name)
            snapshot = table.current_snapshot()
            while snapshot is not None:
                props = snapshot.summary.additional_properties if snapshot.summary is not None else {}
                found = {k: v for k, v in props.items() if k.startswith(OFFSETS_PREFIX)}
                if found:
                    for key, value in found.items():
                        topic, _, partition = key[len(OFFSETS_PREFIX) :].rpartition(".")
                        if topic in self.source_topics and partition.isdigit():
                            tp = (topic, int(partition))
                            out[tp] = max(out.get(tp, -1), int(value))
                    break
                parent = snapshot.parent_snapshot_id
                snapshot = table.snapshot_by_id(parent) if parent is not None else None
        return out

    def positions(self) -> Counter[Position]:
        """How often each source position appears in the lake's rows (market tables and rejects)."""
        counter, _gaps, _ledger = lake_positions(self)
        return counter

    def delete_topics(self) -> None:
        """Delete this deployment's topics (its own and the worker's internal ones), so that hundreds of
        scenario runs do not pile partitions onto the one test broker."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        mine = [
            t
            for t in admin.list_topics(timeout=15).topics
            if t.startswith((f"f{self.run_id}.", f"{self.env['K2_APP_ID']}-"))
        ]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(60)

    def close(self) -> None:
        for replay in self.replays:
            replay.stop()
        for worker in self.workers:
            worker.terminate(30)


# --------------------------------------------------------------------------- the law


def _scan(catalog: Catalog, name: str, columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    table = catalog.load_table(name)
    scan = table.scan(selected_fields=columns) if columns else table.scan()
    rows: list[dict[str, Any]] = scan.to_arrow().to_pylist()
    return rows


def reference_ledger(dep: Deployment) -> str:
    """The table that holds every reference-data offset: ``company_versions`` once K2 writes it
    (a snapshot with K2 offsets), else the upserted ``companies`` (where superseded versions vanish)."""
    catalog = dep.catalog()
    if COMPANY_VERSIONS in dep.tables():
        table = catalog.load_table(COMPANY_VERSIONS)
        for snapshot in table.snapshots():
            props = snapshot.summary.additional_properties if snapshot.summary is not None else {}
            if any(k.startswith(OFFSETS_PREFIX) for k in props):
                return COMPANY_VERSIONS
    return COMPANIES


def lake_positions(dep: Deployment) -> tuple[Counter[Position], Counter[Position], str]:
    """(source positions in market rows and rejects, positions of gap rows, the reference ledger table)."""
    catalog = dep.catalog()
    ledger = reference_ledger(dep)
    seen: Counter[Position] = Counter()
    for table, topic in (
        (TRADES, dep.topics["trades"]),
        (QUOTES, dep.topics["quotes"]),
        (ledger, dep.topics["reference"]),
    ):
        for row in _scan(catalog, table, ("kafka_partition", "kafka_offset")):
            seen[(topic, row["kafka_partition"], row["kafka_offset"])] += 1
    for row in _scan(catalog, REJECTS, ("source_topic", "source_partition", "source_offset")):
        seen[(row["source_topic"], row["source_partition"], row["source_offset"])] += 1
    gaps: Counter[Position] = Counter()
    if GAPS in dep.tables():
        for row in _scan(catalog, GAPS, ("source_topic", "source_partition", "source_offset")):
            gaps[(row["source_topic"], row["source_partition"], row["source_offset"])] += 1
    return seen, gaps, ledger


@dataclass
class LawVerdict:
    """The law, judged: offsets missing or doubled (as ranges), rows for offsets Kafka never had."""

    holds: bool
    source: str
    missing: dict[str, list[list[int]]] = field(default_factory=dict)
    doubled: dict[str, list[list[int]]] = field(default_factory=dict)
    extra: dict[str, list[list[int]]] = field(default_factory=dict)
    gap_rows_doubled: dict[str, list[list[int]]] = field(default_factory=dict)
    reference_checked: bool = False
    audit_output: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def missing_count(self) -> int:
        return _count(self.missing)

    @property
    def doubled_count(self) -> int:
        return _count(self.doubled)


def _lake_law(dep: Deployment, ends: Mapping[TP, int]) -> LawVerdict:
    """The law from the rows: each source offset below its end offset exactly once in one table."""
    seen, gaps, ledger = lake_positions(dep)
    want = {(t, p, o) for (t, p), end in ends.items() for o in range(end)}
    reference_checked = ledger == COMPANY_VERSIONS
    missing = {
        pos for pos in want - set(seen) if reference_checked or pos[0] != dep.topics["reference"]
    }  # superseded companies leave the upserted table by design
    doubled = {pos for pos, n in seen.items() if n > 1}
    extra = set(seen) - want
    gaps_doubled = {pos for pos, n in gaps.items() if n > 1}
    verdict = LawVerdict(
        holds=not (missing or doubled or extra or gaps_doubled),
        source="lake",
        missing=position_ranges(missing),
        doubled=position_ranges(doubled),
        extra=position_ranges(extra),
        gap_rows_doubled=position_ranges(gaps_doubled),
        reference_checked=reference_checked,
    )
    if doubled:
        times = Counter(seen[pos] for pos in doubled)
        verdict.notes.append("doubled offsets landed " + ", ".join(f"{n}x: {c}" for n, c in sorted(times.items())))
    return verdict


def _integration_law(dep: Deployment, verdict: LawVerdict) -> None:
    """Judge the same lake with ``tests/integration/law.py``'s ``assert_law`` too; the stricter verdict wins.

    Its ``assert_law`` is the integration suite's law (a reading of the rows, or ``k2 audit`` as a library
    call once law.py delegates to it), and it needs K2's own settings object: the one place the suite imports K2;
    when that fails (a rewrite moved things) the harness's own reading decides, and the notes say so.
    """
    try:
        from k2.settings import Settings
        from tests.integration.law import assert_law
    except ImportError as exc:
        verdict.notes.append(f"tests/integration/law.py unavailable ({exc}); the rows alone decided")
        return
    k2_vars = {k[3:].lower(): v for k, v in dep.env.items() if k.startswith("K2_")}
    legacy = _LegacyEnv(Settings(**k2_vars), dep.catalog())
    try:
        assert_law(legacy)  # type: ignore[arg-type]
    except AssertionError as exc:
        if verdict.holds:
            verdict.holds = False
            verdict.notes.append(f"tests/integration/law.py says the law is broken: {str(exc)[:2000]}")
        return
    except Exception as exc:  # it could not judge: the rows alone decide
        verdict.notes.append(f"tests/integration/law.py could not judge: {type(exc).__name__}: {exc}")
        return
    if not verdict.holds:
        verdict.notes.append("tests/integration/law.py passes this lake (it judges less: see missing/doubled here)")


@dataclass(frozen=True)
class _LegacyEnv:
    """What ``assert_law`` reads of a ``K2Env``: its settings and its catalog."""

    settings: Any
    _catalog: Catalog

    def catalog(self) -> Catalog:
        return self._catalog


_AUDIT_LINE = re.compile(r"^(missing|doubled|beyond mark|gap rows doubled)\s+(\S+)/(\d+)\b.*: (.*)$")
_AUDIT_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_audit_text(output: str) -> dict[str, dict[str, list[list[int]]]]:
    """Ranges from ``k2 audit``'s text report: lines such as ``missing   market.trades.raw/3: 23304-23316, 23400``."""
    found: dict[str, dict[str, list[list[int]]]] = {}
    for line in output.splitlines():
        match = _AUDIT_LINE.match(line.strip())
        if not match:
            continue
        kind, topic, partition, rest = match.groups()
        rest = rest.split("(in ")[0].split(", ...")[0]
        runs = [[int(a), int(b or a)] for a, b in _AUDIT_RANGE.findall(rest)]
        found.setdefault(kind, {}).setdefault(f"{topic}/{partition}", []).extend(runs)
    return found


def parse_audit_json(report: Mapping[str, Any]) -> dict[str, dict[str, list[list[int]]]]:
    """Ranges from ``k2 audit --json``: per partition ``missing``, ``doubled``, ``beyond_mark``, ``gaps_doubled``."""
    found: dict[str, dict[str, list[list[int]]]] = {}
    for part in report.get("partitions", []):
        where = f"{part['topic']}/{part['partition']}"
        for kind, key in (("missing", "missing"), ("doubled", "doubled"), ("gap rows doubled", "gaps_doubled")):
            runs = [list(map(int, r)) for r in (part.get(key) or {}).get("ranges", [])]
            if runs:
                found.setdefault(kind, {})[where] = runs
        for entry in (part.get("beyond_mark") or {}).values():
            runs = [list(map(int, r)) for r in entry.get("ranges", [])]
            if runs:
                found.setdefault("beyond mark", {}).setdefault(where, []).extend(runs)
    return found


def _audit_law(dep: Deployment) -> LawVerdict:
    """``k2 audit``: exit 0 when the law holds, 1 when it fails (2: it could not check, a harness error).

    ``--json`` when the command has it (ranges in full), its text report otherwise. The audit judges
    offsets up to the lake's marks; what lies above them is lake lag, which the scenario's own wait
    turns into a stall, so nothing unlanded escapes either way.
    """
    proc = dep.k2("audit", "--json", "--settle", "10", check=False, timeout_s=1200)
    as_json = proc.returncode in (0, 1)
    if proc.returncode == 2 and "unrecognized arguments" in proc.stderr:
        proc = dep.k2("audit", check=False, timeout_s=1200)
        as_json = False
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"k2 audit exited {proc.returncode} (neither 0 nor 1):\n{output[-4000:]}")
    verdict = LawVerdict(holds=proc.returncode == 0, source="audit")
    found: dict[str, dict[str, list[list[int]]]]
    if as_json:
        report = json.loads(proc.stdout)
        found = parse_audit_json(report)
        verdict.audit_output = str(report.get("summary"))
        lag = sum(int(p.get("lag") or 0) for p in report.get("partitions", []))
        if lag:
            verdict.notes.append(f"k2 audit did not judge {lag} offset(s) above the marks (lake lag)")
        verdict.reference_checked = True
    else:
        found = parse_audit_text(output)
        verdict.audit_output = output[-8000:]
    verdict.missing = found.get("missing", {})
    verdict.doubled = found.get("doubled", {})
    verdict.extra = found.get("beyond mark", {})
    verdict.gap_rows_doubled = found.get("gap rows doubled", {})
    return verdict


def check_law(dep: Deployment, ends: Mapping[TP, int], law: str) -> LawVerdict:
    """The law, decided in one place. ``law``: ``lake`` (the rows below Kafka's end offsets, and
    ``tests/integration/law.py`` on the same lake, the stricter verdict winning), ``audit`` (the
    ``k2 audit`` command alone) or ``both`` (each must hold; the lake's ranges are reported)."""
    if law == "audit":
        return _audit_law(dep)
    lake = _lake_law(dep, ends)
    if law == "lake":
        _integration_law(dep, lake)
        return lake
    audit = _audit_law(dep)
    lake.source = "lake+audit"
    lake.audit_output = audit.audit_output
    lake.notes += audit.notes
    if lake.holds != audit.holds:
        lake.notes.append(f"k2 audit says the law {'holds' if audit.holds else 'is broken'}; the rows disagree")
        lake.holds = False
    return lake


# --------------------------------------------------------------------------- landed values


@dataclass
class ValueVerdict:
    """Landed values against what was produced: rows equal to the decoded source, rejects byte for byte."""

    checked_rows: int = 0
    checked_rejects: int = 0
    mismatched: dict[str, list[list[int]]] = field(default_factory=dict)
    good_rejected: dict[str, list[list[int]]] = field(default_factory=dict)
    bad_landed: dict[str, list[list[int]]] = field(default_factory=dict)
    reject_bytes_differ: dict[str, list[list[int]]] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    good_rejected_reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not (self.mismatched or self.good_rejected or self.bad_landed or self.reject_bytes_differ)


def _norm(value: Any) -> Any:
    """One comparable form for Avro and Arrow values: instants in microseconds, dates as ISO text."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1_000_000)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _diff(record: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in record.items():
        if name not in row:
            out.append(f"{name}: no such column (source {value!r})")
        elif _norm(value) != _norm(row[name]):
            out.append(f"{name}: lake {row[name]!r} != source {value!r}")
    return out


def check_values(
    dep: Deployment, ends: Mapping[TP, int], expectations: Mapping[Position, str] | None = None
) -> ValueVerdict:
    """Every landed row equal to its source record, every reject carrying its source bytes.

    What a source record must become is ``expectations[position]`` (``row``, ``reject`` or
    ``either``) where the scenario knows (the poison it made); otherwise ``row`` when it
    decodes cleanly with a schema of its topic's subject, ``reject`` when it does not.
    Missing and doubled positions are the law's business (:func:`check_law`), not this one's.
    """
    expectations = expectations or {}
    source = read_topics(dep.bootstrap, ends)
    registry = Registry(dep.stack.schema_registry_url)
    catalog = dep.catalog()
    topic_of = {
        TRADES: dep.topics["trades"],
        QUOTES: dep.topics["quotes"],
        reference_ledger(dep): dep.topics["reference"],
    }
    rows: dict[Position, list[dict[str, Any]]] = {}
    for table, topic in topic_of.items():
        for row in _scan(catalog, table):
            rows.setdefault((topic, row["kafka_partition"], row["kafka_offset"]), []).append(row)
    rejects: dict[Position, list[dict[str, Any]]] = {}
    for row in _scan(catalog, REJECTS, ("source_topic", "source_partition", "source_offset", "reason", "value")):
        rejects.setdefault((row["source_topic"], row["source_partition"], row["source_offset"]), []).append(row)

    verdict = ValueVerdict()
    mismatched: set[Position] = set()
    good_rejected: set[Position] = set()
    bad_landed: set[Position] = set()
    bytes_differ: set[Position] = set()
    reasons: Counter[str] = Counter()
    good_reasons: Counter[str] = Counter()
    for pos, record in source.items():
        decoded = registry.decode(record.value, dep.subject(record.topic))
        want = expectations.get(pos) or ("row" if decoded is not None else "reject")
        for row in rows.get(pos, []):
            verdict.checked_rows += 1
            if decoded is None or want == "reject":
                bad_landed.add(pos)
                _example(verdict, f"{_fmt(pos)} landed as a row but cannot decode: {_short(record.value)}")
                continue
            diff = _diff(decoded.record, row)
            if diff:
                mismatched.add(pos)
                _example(verdict, f"{_fmt(pos)} row differs from source: {'; '.join(diff[:3])}")
        for reject in rejects.get(pos, []):
            verdict.checked_rejects += 1
            reasons[reject["reason"]] += 1
            if reject["value"] != record.value:
                bytes_differ.add(pos)
                _example(
                    verdict,
                    f"{_fmt(pos)} reject value {_short(reject['value'])} != source {_short(record.value)}",
                )
            if want == "row":
                good_rejected.add(pos)
                good_reasons[reject["reason"]] += 1
    verdict.mismatched = position_ranges(mismatched)
    verdict.good_rejected = position_ranges(good_rejected)
    verdict.bad_landed = position_ranges(bad_landed)
    verdict.reject_bytes_differ = position_ranges(bytes_differ)
    verdict.reject_reasons = dict(reasons.most_common())
    verdict.good_rejected_reasons = dict(good_reasons.most_common())
    return verdict


def _fmt(pos: Position) -> str:
    return f"{pos[0]}/{pos[1]}@{pos[2]}"


def _short(value: bytes | None) -> str:
    if value is None:
        return "None"
    return f"{len(value)} bytes {value[:12].hex()}{'...' if len(value) > 12 else ''}"


def _example(verdict: ValueVerdict, text: str, limit: int = 12) -> None:
    if len(verdict.examples) < limit:
        verdict.examples.append(text)


# --------------------------------------------------------------------------- scenarios


@dataclass
class FaultMark:
    """A fault's timing, in seconds from the scenario's start of flow."""

    what: str
    began_s: float
    cleared_s: float | None = None


@dataclass
class ScenarioReport:
    """One line of the fault report: what went in, what came out, what was lost or doubled, and when."""

    scenario: str
    title: str
    version: str
    seed: int
    verdict: str
    failures: list[str]
    events_in: int
    rows_out: int
    rejects: int
    missing_count: int
    doubled_count: int
    missing_by_label: dict[str, int]
    doubled_by_label: dict[str, int]
    missing: dict[str, list[list[int]]]
    doubled: dict[str, list[list[int]]]
    extra: dict[str, list[list[int]]]
    stall: str | None
    recovery_s: float | None
    fault_to_caught_up_s: float | None
    flow_end_to_caught_up_s: float | None
    peak_rss_mb: dict[str, float]
    peak_rss_max_mb: float | None
    faults: list[dict[str, Any]]
    crashes: list[dict[str, Any]]
    values: dict[str, Any]
    law: dict[str, Any]
    notes: list[str]
    started_at: str
    duration_s: float
    code: dict[str, str]

    def line(self) -> str:
        rss = f"{self.peak_rss_max_mb:.0f}MB" if self.peak_rss_max_mb else "-"
        rec = f"{self.recovery_s:.1f}s" if self.recovery_s is not None else "-"
        return (
            f"FAULTS {self.scenario} [{self.version}] {self.verdict.upper()}: events_in={self.events_in} "
            f"rows_out={self.rows_out} rejects={self.rejects} missing={self.missing_count} "
            f"[{format_ranges(self.missing)}] doubled={self.doubled_count} [{format_ranges(self.doubled)}] "
            f"recovery={rec} peak_rss={rss} stall={self.stall or 'no'} crashes={len(self.crashes)}"
            + (f" failures={'; '.join(self.failures)}" if self.failures else "")
        )


def append_report(path: Path, report: ScenarioReport) -> None:
    """Append to the JSON report (a list of scenario reports), under a lock: runs may overlap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".report.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries: list[Any] = []
        if path.exists():
            with contextlib.suppress(ValueError):
                loaded = json.loads(path.read_text() or "[]")
                entries = loaded if isinstance(loaded, list) else []
        entries.append(asdict(report))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1, default=str) + "\n")
        tmp.replace(path)


def _code_under_test(env: Mapping[str, str]) -> dict[str, str]:
    """Which ``k2`` the workers import, and the commit of the tree: the evidence says what it measured."""
    out = {"root": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "import k2; print(k2.__file__)"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    out["k2_module"] = proc.stdout.strip() or proc.stderr.strip()[-200:]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    out["commit"] = git.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "k2"], cwd=ROOT, capture_output=True, text=True)
    out["k2_tree_dirty"] = "yes" if dirty.stdout.strip() else "no"
    return out


class Stall(Exception):
    """The lake stopped moving while behind Kafka."""


class Scenario:
    """One fault scenario: a fresh deployment, faults with timestamps, and a bounded, judged ending."""

    def __init__(self, name: str, title: str, stack: Any, tmp: Path, config: Config, **overrides: str) -> None:
        self.name = name
        self.title = title
        self.config = config
        self.tmp = tmp
        self.rng = random.Random(config.seed ^ zlib.crc32(name.encode()))
        self.services = Services()
        self.env = Deployment(stack, tmp, **overrides)
        self._side: list[Deployment] = []
        self.expectations: dict[Position, str] = {}
        #: What a position holds, for the report's breakdown of lost and doubled offsets (default "source event").
        self.labels: dict[Position, str] = {}
        self.faults: list[FaultMark] = []
        self.crashes: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.restart_on_crash = True
        self.max_restarts = 12
        #: Seconds without any progress, while behind Kafka, that make a stall (see ``wait_caught_up``).
        self.stall_s = config.stall_s
        self._t0 = time.monotonic()
        self._flow_t0: float | None = None
        self._started_at = datetime.now().astimezone().isoformat(timespec="seconds")
        self._rss = RssMonitor(lambda: self.env.workers)
        self._concluded = False

    # Timing ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the flow started (or since the scenario began, before that)."""
        return time.monotonic() - (self._flow_t0 if self._flow_t0 is not None else self._t0)

    def flow_started(self) -> None:
        if self._flow_t0 is None:
            self._flow_t0 = time.monotonic()

    @contextlib.contextmanager
    def fault(self, what: str) -> Iterator[FaultMark]:
        """Time a fault: from entering the block to leaving it (the service is back, the worker restarted)."""
        mark = self.fault_begin(what)
        try:
            yield mark
        finally:
            self.fault_end(mark)

    def fault_begin(self, what: str) -> FaultMark:
        mark = FaultMark(what, round(self.now(), 2))
        self.faults.append(mark)
        print(f"  [{self.name} +{mark.began_s:.1f}s] fault: {what}", flush=True)
        return mark

    def fault_end(self, mark: FaultMark) -> None:
        mark.cleared_s = round(self.now(), 2)

    # Set-up ---------------------------------------------------------------------------------

    def start(self, workers: int = 1, *, wait: bool = True) -> list[Worker]:
        """Fresh tables, ``k2 init`` (topics, schemas, tables), then ``workers`` workers."""
        self.env.drop_tables()
        self.env.k2("init")
        started = [self.env.start_worker() for _ in range(workers)]
        if wait:
            for worker in started:
                worker.wait_ready()
        return started

    def side_deployment(self, name: str) -> Deployment:
        """Another deployment (own topics) on the same stack, e.g. staging topics; cleaned up with the scenario."""
        dep = Deployment(self.env.stack, self.tmp / name)
        self._side.append(dep)
        return dep

    def replay(self, *args: str | Path) -> Replay:
        """``k2 replay ARGS`` in the background; the flow starts now."""
        self.flow_started()
        return self.env.replay(*args)

    # Waiting ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Between waits: notice workers that died on their own, and restart them as an orchestrator would."""
        for worker in list(self.env.workers):
            if worker.alive() or worker.expected_exit or worker.reported:
                continue
            worker.reported = True
            crash = {
                "worker": worker.name,
                "at_s": round(self.now(), 1),
                "returncode": worker.proc.returncode,
                "reason": worker.crash_reason(),
                "log": str(worker.log),
            }
            self.crashes.append(crash)
            print(f"  [{self.name} +{crash['at_s']}s] {worker.name} exited {crash['returncode']}: {crash['reason']}")
            if self.restart_on_crash and len(self.crashes) <= self.max_restarts:
                replacement = self.env.start_worker()
                print(f"  [{self.name}] restarted as {replacement.name}", flush=True)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tick()
            time.sleep(min(0.5, left))

    def landed_rows(self) -> int:
        """Offsets the lake says it holds (from the marks): a cheap progress number."""
        marks = _bounded(self.env.marks, 30.0, {})
        return sum(m + 1 for m in marks.values())

    def wait_landing(self, min_offsets: int = 1, timeout_s: float = 240.0) -> float:
        """Until the lake holds at least ``min_offsets`` offsets: the flow reaches the lake ("during flow")."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            self.tick()
            if self.landed_rows() >= min_offsets:
                return self.now()
            time.sleep(1.0)
        raise Stall(f"nothing reached the lake within {timeout_s:.0f}s (wanted {min_offsets} offsets)")

    def wait_worker_ready(self, timeout_s: float = 300.0) -> float:
        """Until a live worker has said "Worker ready" (its group settled): the scenario time it is seen."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            self.tick()
            if any(w.ready() for w in self.env.live_workers()):
                return self.now()
            time.sleep(0.5)
        raise Stall(f"no worker became ready within {timeout_s:.0f}s")

    def wait_replays(self) -> float:
        """Until every background replay has finished (bounded by the stall limit); the flow's end."""
        began = time.monotonic()
        limit = self.config.cap_s
        while any(r.running() for r in self.env.replays):
            if time.monotonic() - began > limit:
                raise Stall(f"a replay still runs after {limit:.0f}s")
            self.tick()
            time.sleep(0.5)
        for replay in self.env.replays:
            if replay.proc.returncode != 0:
                self.notes.append(
                    f"k2 replay {' '.join(replay.args)} exited {replay.proc.returncode}: {replay.tail(3)!r}"
                )
        return self.now()

    def wait_caught_up(self) -> tuple[float | None, str | None]:
        """Until every source offset is in the lake's rows: (time caught up, None), or (None, why it stalled).

        Progress is read from the snapshot marks (cheap) and confirmed from the rows. The lake
        "settles" when its marks cover Kafka but the rows stay incomplete for ``settle_s``: the
        worker considers itself done, and the law will name what is missing. A lake whose marks
        and rows do not move for ``stall_s`` while behind Kafka has stalled; ``cap_s`` bounds it all.
        """
        cfg = self.config
        stall_s = self.stall_s
        began = last_change = time.monotonic()
        last_state: Any = None
        marks_cover_since: float | None = None
        last_rows_check = 0.0
        covered: tuple[tuple[TP, int], ...] | None = None  # rows per partition, from the last row scan
        ends: dict[TP, int] | None = None
        marks: dict[TP, int] | None = None
        while True:
            self.tick()
            now = time.monotonic()
            ends = _bounded(self.env.end_offsets, 30.0, None) or ends  # unreachable: as last seen
            marks = _bounded(self.env.marks, 30.0, None) or marks
            marks_cover = (
                ends is not None and marks is not None and all(marks.get(tp, -1) + 1 >= e for tp, e in ends.items())
            )
            if ends is not None and (marks_cover or now - last_rows_check > 15.0):
                last_rows_check = now
                counter = _bounded(self.env.positions, 120.0, None)
                if counter is not None:
                    present = Counter((t, p) for (t, p, o) in counter if o < ends.get((t, p), 0))
                    covered = tuple(sorted(present.items()))
                    if all(present.get(tp, 0) >= e for tp, e in ends.items() if tp[0] != self.env.topics["reference"]):
                        return self.now(), None
            state = (tuple(sorted((ends or {}).items())), tuple(sorted((marks or {}).items())), covered)
            if state != last_state:
                last_state, last_change = state, now
            if marks_cover:
                marks_cover_since = marks_cover_since or now
                if now - marks_cover_since > cfg.settle_s and now - last_change > cfg.settle_s:
                    self.notes.append("the marks cover Kafka but rows are missing (the lake settled incomplete)")
                    return self.now() - (now - marks_cover_since), None  # caught up, as far as K2 knows
            else:
                marks_cover_since = None
            if now - last_change > stall_s:
                behind = {
                    f"{t}/{p}": e - (marks or {}).get((t, p), -1) - 1
                    for (t, p), e in (ends or {}).items()
                    if e - (marks or {}).get((t, p), -1) - 1 > 0
                }
                return None, f"lake stopped moving for {stall_s:.0f}s while behind Kafka by {behind}"
            if now - began > cfg.cap_s:
                return None, f"lake not caught up after {cfg.cap_s:.0f}s (still moving)"
            time.sleep(2.0)

    # The ending --------------------------------------------------------------------------------

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """The end of the ``with`` block is the end of the scenario: conclude it, whatever happened in it.

        A stall inside the block (a bounded wait that ran out) goes straight to the judgement; any other
        error aborts the faults but still gets its report, so every scenario leaves a line of evidence.
        """
        if self._concluded or (exc is not None and not isinstance(exc, Exception)):
            return
        if exc is None:
            self.conclude()
        elif isinstance(exc, Stall):
            self.conclude(stalled=str(exc))
        else:
            self.conclude(extra_failures=[f"scenario aborted: {type(exc).__name__}: {exc}"])

    def conclude(self, extra_failures: Iterable[str] = (), stalled: str | None = None) -> ScenarioReport:
        """Wait for the flow and the lake (bounded), stop the workers, judge the law and the values,
        report, and fail the test if anything is wrong. ``stalled``: the scenario already stalled
        (the judgement is of the lake as it is)."""
        self._concluded = True
        failures = list(extra_failures)
        stall: str | None = stalled
        flow_end: float | None = None
        caught_up: float | None = None
        if stall is None:
            try:
                flow_end = self.wait_replays()
                caught_up, stall = self.wait_caught_up()
            except Stall as exc:
                stall = str(exc)
        if stall:
            failures.append(f"stall: {stall}")
            self.notes += [f"{w.name} (pid {w.pid}) log tail:\n{w.tail(15)}" for w in self.env.workers[-3:]]
        for worker in self.env.live_workers():
            took = worker.terminate(60)
            if took is None:
                self.notes.append(f"{worker.name} ignored SIGTERM for 60s at the end and was SIGKILLed")
        self.tick()
        self._rss.stop()
        for replay in self.env.replays:
            replay.stop()

        ends = self.env.end_offsets()
        try:
            law = check_law(self.env, ends, self.config.law)
            if not law.holds:
                failures.append(
                    f"law broken: missing {law.missing_count} [{format_ranges(law.missing, 6)}], doubled "
                    f"{law.doubled_count} [{format_ranges(law.doubled, 6)}], extra {_count(law.extra)}, "
                    f"gap rows doubled {_count(law.gap_rows_doubled)}"
                )
        except Exception as exc:  # a judgement that cannot be made is a failure, and still reported
            law = LawVerdict(holds=False, source=self.config.law, notes=[f"law check failed: {exc!r}"])
            failures.append(f"law check failed: {type(exc).__name__}: {exc}")
        try:
            values = check_values(self.env, ends, self.expectations)
            if not values.holds:
                failures.append(
                    f"values: {_count(values.mismatched)} rows differ from source, {_count(values.good_rejected)} "
                    f"good events rejected {values.good_rejected_reasons}, {_count(values.bad_landed)} bad events "
                    f"landed as rows, {_count(values.reject_bytes_differ)} rejects with altered bytes"
                )
        except Exception as exc:
            values = ValueVerdict(examples=[f"value check failed: {exc!r}"])
            failures.append(f"value check failed: {type(exc).__name__}: {exc}")
        rows_out, rejects = self._counts()
        cleared = [f.cleared_s for f in self.faults if f.cleared_s is not None]
        began = [f.began_s for f in self.faults]
        peaks = {w.name: round(w.peak_rss_kb / 1024, 1) for w in self.env.workers if w.peak_rss_kb}
        report = ScenarioReport(
            scenario=self.name,
            title=self.title,
            version=self.config.version,
            seed=self.config.seed,
            verdict="fail" if failures else "pass",
            failures=failures,
            events_in=sum(ends.values()),
            rows_out=rows_out,
            rejects=rejects,
            missing_count=law.missing_count,
            doubled_count=law.doubled_count,
            missing_by_label=self._by_label(law.missing),
            doubled_by_label=self._by_label(law.doubled),
            missing=law.missing,
            doubled=law.doubled,
            extra=law.extra,
            stall=stall,
            recovery_s=round(caught_up - max(cleared), 1) if caught_up is not None and cleared else None,
            fault_to_caught_up_s=round(caught_up - min(began), 1) if caught_up is not None and began else None,
            flow_end_to_caught_up_s=round(caught_up - flow_end, 1)
            if caught_up is not None and flow_end is not None
            else None,
            peak_rss_mb=peaks,
            peak_rss_max_mb=max(peaks.values()) if peaks else None,
            faults=[asdict(f) for f in self.faults],
            crashes=self.crashes,
            values=asdict(values),
            law={k: v for k, v in asdict(law).items() if k not in ("missing", "doubled", "extra")},
            notes=self.notes,
            started_at=self._started_at,
            duration_s=round(time.monotonic() - self._t0, 1),
            code=_code_under_test(self.env.env),
        )
        append_report(self.config.report_path, report)
        print("\n" + report.line(), flush=True)
        if report.missing_by_label or report.doubled_by_label:
            print(f"  missing by kind: {report.missing_by_label}; doubled by kind: {report.doubled_by_label}")
        for example in values.examples[:5]:
            print(f"  e.g. {example}")
        if failures:  # the report says it all; a traceback through the harness would not add anything
            pytest.fail(report.line() + "\n" + "\n".join(self.notes[-6:]), pytrace=False)
        return report

    def _counts(self) -> tuple[int, int]:
        """(rows in the market tables, rows in the rejects table); -1 when the lake cannot say."""
        try:
            catalog = self.env.catalog()
            tables = (TRADES, QUOTES, reference_ledger(self.env))
            rows_out = sum(len(_scan(catalog, table, ("kafka_offset",))) for table in tables)
            return rows_out, len(_scan(catalog, REJECTS, ("source_offset",)))
        except Exception:
            return -1, -1

    def _by_label(self, found: Mapping[str, list[list[int]]]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for tp, runs in found.items():
            topic, _, partition = tp.rpartition("/")
            for first, last in runs:
                for offset in range(first, last + 1):
                    counts[self.labels.get((topic, int(partition), offset), "source event")] += 1
        return dict(counts.most_common())

    def close(self) -> None:
        """Whatever happened: workers and replays stopped, the stack whole again, the topics gone."""
        self._rss.stop()
        self.env.close()
        self.services.heal()
        for dep in (self.env, *self._side):
            with contextlib.suppress(Exception):
                dep.delete_topics()


ScenarioFactory = Callable[..., Scenario]
