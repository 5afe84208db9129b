"""The systems of ``bench/compare.py``, behind one small interface: start, how far, kill, stop.

Each :class:`System` reads the same loaded topics with a consumer group of its own from the
earliest offset and lands (or counts) into a folder of its own. ``progress()`` says how many
of the loaded events are landed (cheaply: status lines, snapshot marks or row counts);
``complete()`` is the exact answer, checked only when ``progress()`` says it could be.
Their processes are started in sessions of their own and measured by :attr:`System.meter`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog

from bench.lakecheck import Lineage, exactness, rows_in
from bench.procs import Meter, kill_session, spawn, stop_session
from bench.systems.connect import ConnectSystem
from bench.systems.quix import READY_LINE, QuixSystem

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRADES_TABLE = "market_data.trades"
QUOTES_TABLE = "market_data.quotes"
REJECTS_TABLE = "market_data.rejects"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Ends = Mapping[tuple[str, int], int]

#: K2 workers run with the image's allocators (Dockerfile; README, Memory) unless the driver's
#: environment or a system's ``extra_env`` says otherwise (an empty value unsets one).
ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "MALLOC_ARENA_MAX": "2"}


class SystemFailed(RuntimeError):
    """A system's process exited or reported a failure while the benchmark waited for it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Source:
    """The loaded topics and where the services answer."""

    broker: str
    registry: str
    trades: str
    quotes: str
    reference: str
    rejects: str

    @property
    def market(self) -> tuple[str, str]:
        return (self.trades, self.quotes)

    def k2_env(self) -> dict[str, str]:
        return {
            "K2_KAFKA_BOOTSTRAP_SERVERS": self.broker,
            "K2_SCHEMA_REGISTRY_URL": self.registry,
            "K2_TRADES_TOPIC": self.trades,
            "K2_QUOTES_TOPIC": self.quotes,
            "K2_REFERENCE_TOPIC": self.reference,
            "K2_REJECTS_TOPIC": self.rejects,
        }


def base_env() -> dict[str, str]:
    """The driver's environment without pyiceberg configuration: every lake here is its own SqlCatalog."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def k2_command(args: list[str], env: Mapping[str, str], timeout_s: float = 1800) -> None:
    """Run ``k2 ARGS`` with this interpreter and this checkout's code."""
    cmd = [sys.executable, "-m", "k2.cli.main", *args]
    done = subprocess.run(cmd, env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise SystemFailed(
            f"`k2 {' '.join(args)}` exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


@dataclass
class System:
    """One system under test over one set of topics, in ``workdir``."""

    name: str
    source: Source
    ends: Ends
    workdir: Path
    flush_interval_s: float = 5.0
    meter: Meter = field(default_factory=Meter)
    lake = True

    @property
    def total(self) -> int:
        return sum(self.ends.values())

    def prepare(self) -> None:
        """Everything before the clock starts (folders, tables, configuration)."""
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`SystemFailed` when the system died."""

    def progress(self) -> int:
        raise NotImplementedError

    def complete(self) -> bool:
        return self.progress() >= self.total

    def ready(self) -> bool:
        """Consuming (for the freshness phase: produce only once it is)."""
        return True

    def first_mark(self) -> tuple[float, int] | None:
        """(time, count) of the system's own first report (counters only); None: the driver sees it."""
        return None

    def done_time(self) -> float | None:
        """When the system itself reported it was done (counters only)."""
        return None

    def kill(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # lake systems
    def catalog(self) -> Catalog:
        raise NotImplementedError

    def tables(self) -> list[str]:
        return [TRADES_TABLE, QUOTES_TABLE]

    def lineages(self) -> list[Lineage]:
        return [Lineage(TRADES_TABLE, self.source.trades), Lineage(QUOTES_TABLE, self.source.quotes)]

    def versions(self) -> dict[str, str]:
        return {}


# --------------------------------------------------------------------------- processes of our own


@dataclass
class _Procs(System):
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemFailed(f"{self.name}: process {proc.pid} exited with {proc.returncode}; see {self.workdir}")

    def kill(self) -> None:
        self.meter.sample()
        for proc in self.procs:
            kill_session(proc)
        self.procs = []

    def stop(self) -> None:
        self.meter.sample()
        for proc in self.procs:
            stop_session(proc)
        self.procs = []


@dataclass
class Counter(_Procs):
    """floor or faust-bare: count every event, report first and done through a status file."""

    lake = False

    @property
    def status(self) -> Path:
        return self.workdir / "status"

    def _lines(self) -> dict[str, tuple[float, int]]:
        try:
            text = self.status.read_text()
        except FileNotFoundError:
            return {}
        out = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[0]] = (float(parts[1]), int(parts[2]))
        return out

    def progress(self) -> int:
        lines = self._lines()
        if "done" in lines:
            return lines["done"][1]
        return 1 if "first" in lines else 0

    def complete(self) -> bool:
        return "done" in self._lines()

    def first_mark(self) -> tuple[float, int] | None:
        return self._lines().get("first")

    def done_time(self) -> float | None:
        done = self._lines().get("done")
        return done[0] if done else None


@dataclass
class Floor(Counter):
    def start(self) -> None:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "systems" / "floor.py"),
            "--broker",
            self.source.broker,
            "--registry",
            self.source.registry,
            "--topics",
            ",".join(self.source.market),
            "--total",
            str(self.total),
            "--group",
            f"bench-floor-{self.workdir.name}-{time.time_ns()}",
            "--status",
            str(self.status),
        ]
        self.procs.append(spawn(cmd, base_env(), self.workdir / "floor.log", self.workdir, self.meter))


@dataclass
class FaustBare(Counter):
    def start(self) -> None:
        env = base_env() | {
            "BENCH_APP_ID": f"bench-faust-bare-{self.workdir.name}-{time.time_ns()}",
            "BENCH_BROKER": self.source.broker,
            "BENCH_WEB_PORT": str(free_port()),
            "BENCH_TOPICS": ",".join(self.source.market),
            "BENCH_TOTAL": str(self.total),
            "BENCH_STATUS": str(self.status),
        }
        cmd = [str(BIN / "faust"), "-A", "bench.systems.faust_bare", "worker", "-l", "warn"]
        self.procs.append(spawn(cmd, env, self.workdir / "faust-bare.log", self.workdir, self.meter))


#: Another checkout of K2 (a directory holding its ``k2`` package) that the ``k2-base`` system runs.
BASELINE_VAR = "BENCH_K2_BASELINE"


@dataclass
class K2(_Procs):
    """``faust -A k2.app worker`` of this checkout, ``workers`` of them in one group, one lake.

    With ``baseline`` set, K2 of the checkout in ``$BENCH_K2_BASELINE`` instead (``compare.py
    --baseline``): a change and what it changes run in the same rounds, on the same venv.
    """

    workers: int = 1
    baseline: bool = False
    app_id: str = ""
    ports: list[int] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    """Added to each worker's environment (an allocator setting under test, say)."""
    probe: bool = False
    """Run each worker under ``bench/memprobe.py``: its memory's parts, as JSON lines in ``workerN.mem.jsonl``."""

    def env(self, port: int) -> dict[str, str]:
        env = (
            ALLOCATOR_ENV
            | base_env()
            | self.source.k2_env()
            | {
                "K2_APP_ID": self.app_id,
                "K2_VAR_DIR": str(self.workdir / "var"),
                "K2_WEB_PORT": str(port),
                "K2_FLUSH_INTERVAL_S": str(self.flush_interval_s),
            }
            | self.extra_env
        )
        if self.baseline:
            env["PYTHONPATH"] = os.environ[BASELINE_VAR]  # its k2 package before this checkout's (editable) one
        return {k: v for k, v in env.items() if v != ""}

    def prepare(self) -> None:
        super().prepare()
        self.app_id = self.app_id or f"bench-{self.name}-{self.workdir.name}-{time.time_ns() % 10**9}"
        self.ports = [free_port() for _ in range(self.workers)]
        k2_command(["init"], self.env(self.ports[0]), timeout_s=300)  # K2's tables in this system's own catalog

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            env = self.env(port)
            cmd = [str(BIN / "faust"), "-A", "k2.app", "worker", "-l", "info"]
            if self.probe:
                cmd[:1] = [sys.executable, "-m", "bench.memprobe"]
                env["BENCH_MEMPROBE_OUT"] = str(self.workdir / f"worker{i}.mem.jsonl")
            self.procs.append(spawn(cmd, env, self.workdir / f"worker{i}.log", self.workdir, self.meter))

    def catalog(self) -> Catalog:
        from k2.catalog import default_catalog_properties

        return SqlCatalog("k2", **default_catalog_properties(self.workdir / "var"))

    def progress(self) -> int:
        from k2.lake.status import table_status

        marks: dict[tuple[str, int], int] = {}
        for status in table_status(self.catalog()):
            for tp, offset in status.offsets.items():
                marks[tp] = max(offset, marks.get(tp, -1))
        return sum(min(end, marks.get(tp, -1) + 1) for tp, end in self.ends.items())

    def lineages(self) -> list[Lineage]:
        rejects = [
            Lineage(REJECTS_TABLE, t, "source_partition", "source_offset", "source_topic") for t in self.source.market
        ]
        return [*super().lineages(), *rejects]

    def ready(self) -> bool:
        for port in self.ports:
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{port}/k2/ready", timeout=2) as response:
                    if response.status != 200:
                        return False
            except OSError:
                return False
        return True

    def versions(self) -> dict[str, str]:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return {"k2_commit": done.stdout.strip()}


# --------------------------------------------------------------------------- the wrapped peers


def _exact(system: System) -> bool:
    return exactness(system.catalog(), system.lineages(), system.ends)["missing"] == 0


@dataclass
class _Peer(System):
    """A wrapped peer that writes no marks: progress is rows landed; done when exactly every event landed."""

    _checked_at: int = -1

    def progress(self) -> int:
        return min(self.total, rows_in(self.catalog(), self.tables()))

    def complete(self) -> bool:
        rows = rows_in(self.catalog(), self.tables())
        if rows < self.total or rows == self._checked_at:
            return False
        self._checked_at = rows
        return _exact(self)


@dataclass
class Quix(_Peer):
    quix: QuixSystem | None = None

    def prepare(self) -> None:
        super().prepare()
        self.quix = QuixSystem(
            self.source.broker,
            self.source.registry,
            {"trades": self.source.trades, "quotes": self.source.quotes},
            self.workdir,
            commit_interval_s=self.flush_interval_s,
            consumer_group=f"bench-quix-{self.workdir.name}-{time.time_ns() % 10**9}",
            partitioning="k2",  # day(exchange_timestamp), as K2's and Connect's tables
            consumer_config={"session.timeout.ms": 15000},
        )
        self.quix.prepare()

    def start(self) -> None:
        assert self.quix is not None
        self.meter.watch(self.quix.start())

    def check(self) -> None:
        assert self.quix is not None
        if not self.quix.running():
            raise SystemFailed(f"quix exited; see {self.quix.log_path}")

    def ready(self) -> bool:
        assert self.quix is not None
        data = self.quix.log_path.read_bytes()
        return READY_LINE.encode() in data[data.rfind(b"--- start ") :]

    def catalog(self) -> Catalog:
        assert self.quix is not None
        return self.quix.catalog()

    def kill(self) -> None:
        if self.quix is None:
            return
        self.meter.sample()
        self.quix.kill()

    def stop(self) -> None:
        if self.quix is None:
            return
        self.meter.sample()
        try:
            self.quix.stop()
        finally:
            self.quix.kill()

    def versions(self) -> dict[str, str]:
        from bench.systems.quix import venv_versions

        have = venv_versions()
        return {k: have[k] for k in ("quixstreams", "pyiceberg", "confluent-kafka") if k in have}


@dataclass
class Connect(_Peer):
    connect: ConnectSystem | None = None

    def prepare(self) -> None:
        super().prepare()
        self.connect = ConnectSystem(
            self.source.broker,
            self.source.registry,
            {self.source.trades: TRADES_TABLE, self.source.quotes: QUOTES_TABLE},
            self.workdir,
            commit_interval_s=self.flush_interval_s,
            group_id=f"bench-connect-{self.workdir.name}-{time.time_ns() % 10**9}",
        )
        self.connect.prepare()

    def start(self) -> None:
        assert self.connect is not None
        self.connect.start()
        self.meter.watch(self.connect.pids()[0])

    def check(self) -> None:
        assert self.connect is not None
        try:
            self.connect.check()
        except Exception as exc:
            raise SystemFailed(str(exc)) from exc

    def ready(self) -> bool:
        assert self.connect is not None
        status = self.connect.status() or {}
        tasks = status.get("tasks", [])
        return bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)

    def catalog(self) -> Catalog:
        assert self.connect is not None
        return self.connect.catalog()

    def kill(self) -> None:
        if self.connect is None:
            return
        self.meter.sample()
        self.connect.kill()

    def stop(self) -> None:
        if self.connect is None:
            return
        self.meter.sample()
        self.connect.stop()

    def versions(self) -> dict[str, str]:
        from bench.systems.connect import APICURIO_CONVERTER_VERSION, CONNECT_VERSION, ICEBERG_VERSION

        return {
            "connect-runtime": CONNECT_VERSION,
            "iceberg-kafka-connect": ICEBERG_VERSION,
            "apicurio-converter": APICURIO_CONVERTER_VERSION,
        }


SYSTEMS: dict[str, tuple[type[System], dict[str, int]]] = {
    "floor": (Floor, {}),
    "faust-bare": (FaustBare, {}),
    "k2": (K2, {"workers": 1}),
    "k2x2": (K2, {"workers": 2}),
    "k2-base": (K2, {"workers": 1, "baseline": True}),
    "quix": (Quix, {}),
    "connect": (Connect, {}),
}
LAKE_SYSTEMS = ("k2", "k2x2", "quix", "connect")


def make(name: str, source: Source, ends: Ends, workdir: Path, flush_interval_s: float) -> System:
    cls, extra = SYSTEMS[name]
    return cls(name, source, ends, workdir, flush_interval_s, **extra)  # type: ignore[arg-type]
