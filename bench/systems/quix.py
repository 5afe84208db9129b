"""Quix Streams (PyPI ``quixstreams`` 3.28) as a benchmark system: K2's topics into Iceberg with its IcebergSink.

The driver runs in K2's interpreter; Quix runs in its own virtualenv (``var/bench/quix-venv``,
git-ignored, made once and reused), because its pins (confluent-kafka < 2.13, pydantic
< 2.14, ...) differ from K2's and comparing two systems must not change either one. The
application itself is ``bench/systems/quix_app.py``, started by that venv's python with a
JSON config this module writes::

    system = QuixSystem("127.0.0.1:9092", "http://127.0.0.1:8081/apis/ccompat/v7",
                        {"trades": "market.trades.raw", "quotes": "market.quotes.raw"},
                        Path("/tmp/quix-run"), commit_interval_s=5)
    system.prepare()                 # venv (cached), config, folders
    system.start()                   # -> pid; system.wait_ready(60)
    system.usage()                   # CPU seconds, peak RSS so far (sample it while it runs)
    system.kill()                    # SIGKILL, as a crash; start() again to restart
    system.stop()                    # SIGTERM: Quix's last checkpoint, then exit
    system.catalog().load_table(system.tables["trades"])

Its lake is an embedded pyiceberg ``SqlCatalog`` named ``k2`` at ``workdir/iceberg/catalog.db``
with the warehouse ``workdir/iceberg/warehouse``: the layout K2's own embedded catalog uses,
so ``k2.catalog.load_k2_catalog(Settings(var_dir=workdir))`` opens it too. Tables keep
K2's names (``market_data.trades``, ``market_data.quotes``) and columns, plus Quix's
``_timestamp`` (the Kafka timestamp) and ``_key``; every row has ``kafka_partition`` and
``kafka_offset``. Quix writes no offsets into snapshot summaries: progress is counted
from ``total-records`` and rows, not from marks.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().with_name("quix_app.py")
DEFAULT_VENV = ROOT / "var" / "bench" / "quix-venv"

#: What the venv gets. Quix 3.28's ``iceberg`` extra brings pyiceberg[pyarrow] (and Glue,
#: unused); ``sql-sqlite`` is for the SqlCatalog, ``pyiceberg-core`` for the partition
#: transforms (IcebergSink partitions by day by default; pyiceberg >= 0.10 needs the Rust
#: core for that), and the extra pins a pyiceberg-core that matches pyiceberg (a bare
#: ``pyiceberg-core`` takes the newest, which pyiceberg 0.12 does not declare).
REQUIREMENTS: tuple[str, ...] = (
    "quixstreams[iceberg]==3.28.*",
    "pyiceberg[pyarrow,sql-sqlite,pyiceberg-core]",
    "fastavro",
)
CATALOG_NAME = "k2"
TABLES: Mapping[str, str] = {"trades": "market_data.trades", "quotes": "market_data.quotes"}
PIP_TIMEOUT_S = 1200.0
READY_LINE = "The application started and is now processing incoming messages"
APPEND_LINE = "] : Appended "

Partitioning = Literal["quix", "k2"]
Guarantee = Literal["at-least-once", "exactly-once"]


class QuixError(RuntimeError):
    """Quix could not be set up, started or stopped; the message says what to look at."""


@dataclass(frozen=True)
class Usage:
    """What a run of the process cost, as last seen in /proc (a dead process keeps its last sample)."""

    pid: int
    cpu_s: float
    """User + system CPU seconds of the process (all its threads)."""
    peak_rss_mib: float
    """VmHWM: the largest resident set the process ever had."""


def ensure_venv(venv: Path = DEFAULT_VENV, requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """The venv's python, creating the venv and installing ``requirements`` once.

    A stamp file records what was installed; the venv is rebuilt only when the
    requirements change. A file lock keeps two drivers from installing at once.

    Raises:
        QuixError: venv creation or pip failed or took longer than :data:`PIP_TIMEOUT_S`.
    """
    python = venv / "bin" / "python"
    stamp = venv / "k2-bench-requirements.json"
    wanted = json.dumps(list(requirements))
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        ]
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise QuixError(f"{' '.join(cmd)} took more than {PIP_TIMEOUT_S:.0f}s; is PyPI reachable?") from None
            if done.returncode != 0:
                raise QuixError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        stamp.write_text(wanted)
    return python


def venv_versions(venv: Path = DEFAULT_VENV) -> dict[str, str]:
    """Every distribution in the venv and its version (``pip list``), for the report."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {row["name"]: row["version"] for row in json.loads(out)}


def read_usage(pid: int) -> Usage | None:
    """CPU seconds and peak RSS of a live process from /proc, or None once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name (which may hold spaces) start at field 3; utime, stime are 14, 15.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    if hwm is None:  # a zombie has no memory lines
        return None
    return Usage(pid=pid, cpu_s=cpu, peak_rss_mib=int(hwm.split()[1]) / 1024)


@dataclass
class QuixSystem:
    """One Quix Streams application over K2's trades and quotes topics, as the driver sees it.

    Args:
        broker: Kafka bootstrap servers.
        registry_url: Confluent-compatible registry base URL (Apicurio: ``.../apis/ccompat/v7``).
        topics: contract kind -> topic name; kinds are ``trades`` and ``quotes``.
        workdir: everything of this system's run: config, log, Quix state dir, the lake.
        commit_interval_s: Quix's ``commit_interval``: how often it flushes the sink (one
            Iceberg append per topic-partition with data) and then commits offsets.
        consumer_group: defaults to a fresh ``quix-bench-<random>`` per instance; reuse an
            instance (or pass the same name) to restart from the committed offsets.
        partitioning: ``quix`` keeps IcebergSink's default, identity(``_key``) +
            day(``_timestamp``), i.e. per symbol and Kafka-timestamp day; ``k2`` partitions by
            day(``exchange_timestamp``) as K2's tables do.
        processing_guarantee: Quix's own setting. ``exactly-once`` makes Quix's Kafka side
            transactional; its sinks are still flushed before the commit, so a crash between
            an Iceberg append and the commit still duplicates.
        consumer_config: extra librdkafka consumer settings (e.g. ``session.timeout.ms``).
        venv: the Quix virtualenv (created by :meth:`prepare` when missing).
    """

    broker: str
    registry_url: str
    topics: Mapping[str, str]
    workdir: Path
    commit_interval_s: float = 5.0
    consumer_group: str = field(default_factory=lambda: f"quix-bench-{uuid.uuid4().hex[:8]}")
    partitioning: Partitioning = "quix"
    processing_guarantee: Guarantee = "at-least-once"
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    venv: Path = DEFAULT_VENV
    name: str = "quix"

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _usage: dict[int, Usage] = field(default_factory=dict, init=False, repr=False)
    _python: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.topics) - set(TABLES)
        if unknown or not self.topics:
            raise ValueError(f"topics maps kinds {sorted(TABLES)} to topic names; got {dict(self.topics)}")
        self.workdir = Path(self.workdir).resolve()

    # ------------------------------------------------------------------ where things are

    @property
    def tables(self) -> dict[str, str]:
        """Contract kind -> Iceberg table identifier, for the kinds this system consumes."""
        return {kind: TABLES[kind] for kind in self.topics}

    @property
    def catalog_properties(self) -> dict[str, str]:
        """The SqlCatalog's properties; open it with ``SqlCatalog(CATALOG_NAME, **these)``."""
        lake = self.workdir / "iceberg"
        return {"uri": f"sqlite:///{lake / 'catalog.db'}", "warehouse": (lake / "warehouse").as_uri()}

    @property
    def config_path(self) -> Path:
        return self.workdir / "quix-config.json"

    @property
    def log_path(self) -> Path:
        """Quix's output, appended across restarts."""
        return self.workdir / "quix.log"

    def catalog(self) -> Catalog:
        """This system's catalog, opened with the caller's pyiceberg (K2's, in the driver)."""
        from pyiceberg.catalog.sql import SqlCatalog

        return SqlCatalog(CATALOG_NAME, **self.catalog_properties)

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Make the venv (once; minutes the first time), the folders and the app's config.

        Raises:
            QuixError: the venv could not be made (see :func:`ensure_venv`).
        """
        self._python = ensure_venv(self.venv)
        (self.workdir / "iceberg" / "warehouse").mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        props = self.catalog_properties
        config = {
            "broker": self.broker,
            "registry_url": self.registry_url,
            "consumer_group": self.consumer_group,
            "tables": {topic: TABLES[kind] for kind, topic in self.topics.items()},
            "kinds": {topic: kind for kind, topic in self.topics.items()},
            "catalog_name": CATALOG_NAME,
            "catalog_uri": props["uri"],
            "warehouse": props["warehouse"],
            "state_dir": str(self.workdir / "state"),
            "commit_interval_s": self.commit_interval_s,
            "partitioning": self.partitioning,
            "processing_guarantee": self.processing_guarantee,
            "consumer_config": dict(self.consumer_config),
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def start(self) -> int:
        """Start the application (again, after a kill or stop: same group, same lake); its pid.

        Raises:
            QuixError: :meth:`prepare` was not called, or it is already running.
        """
        if self._python is None or not self.config_path.exists():
            raise QuixError("call prepare() before start()")
        if self.running():
            raise QuixError(f"Quix is already running (pid {self.pid}); stop() or kill() it first")
        # Quix's own interpreter: nothing of K2's environment (PYTHONPATH, pyiceberg config) leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYICEBERG_", "PYTHON"))}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(self._python), str(APP), str(self.config_path)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self._proc.pid

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) process, None before the first start."""
        return self._proc.pid if self._proc else None

    def pids(self) -> list[int]:
        """The processes to measure: one (Quix's consumer, producer and sink are threads of it)."""
        return [self._proc.pid] if self.running() and self._proc else []

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def usage(self) -> Usage | None:
        """Sample the process now (call it while it runs); the last sample once it has exited."""
        if self._proc is None:
            return None
        now = read_usage(self._proc.pid) if self._proc.poll() is None else None
        if now is not None:
            self._usage[self._proc.pid] = now
        return self._usage.get(self._proc.pid)

    def usages(self) -> list[Usage]:
        """The last sample of every process this instance started (one per start), oldest first."""
        self.usage()
        return list(self._usage.values())

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until Quix logged that it processes messages (its topics and sinks are set up).

        Raises:
            QuixError: the process exited first, or ``timeout_s`` passed.
        """
        if self._proc is None:
            raise QuixError("call start() before wait_ready()")
        begin = time.monotonic()
        offset = self._log_size_at_start()
        while time.monotonic() - begin < timeout_s:
            if self._proc.poll() is not None:
                raise QuixError(f"Quix exited with {self._proc.returncode} before it was ready; see {self.log_path}")
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                if READY_LINE.encode() in fh.read():
                    return time.monotonic() - begin
            self.usage()
            time.sleep(0.2)
        raise QuixError(f"Quix not ready after {timeout_s:.0f}s (no {READY_LINE!r} in {self.log_path})")

    def appends_logged(self) -> int:
        """How many Iceberg appends the current process logged so far (IcebergSink logs each one).

        One checkpoint flushes one append per topic-partition with data, then commits the
        offsets: a driver that wants to crash Quix inside that window kills it right after
        this count grows.
        """
        if self._proc is None or not self.log_path.exists():
            return 0
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_size_at_start())
            return fh.read().count(APPEND_LINE.encode())

    def _log_size_at_start(self) -> int:
        """Where this start's output begins in the log (the last '--- start' line)."""
        data = self.log_path.read_bytes()
        return max(0, data.rfind(b"--- start "))

    def kill(self) -> None:
        """SIGKILL, as a crash: no checkpoint, batches in memory lost, offsets not committed."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.usage()
        os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: Quix flushes its sinks and commits a last checkpoint. Its exit code.

        Raises:
            QuixError: it did not exit within ``timeout_s`` (it is then killed).
        """
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self.usage()
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise QuixError(f"Quix did not stop within {timeout_s:.0f}s of SIGTERM; killed it") from None
        return self._proc.returncode
