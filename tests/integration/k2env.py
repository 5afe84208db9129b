"""An isolated K2 deployment on the shared local stack: own topics, consumer group, var dir, port.

Runs K2 the way users do: ``k2 init`` and ``k2 replay`` as commands, the worker as
``faust -A k2.app worker`` in its own process, so a test can kill it like a crash would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError

from k2.admin.watermarks import end_offsets
from k2.audit.kafka import KafkaLog
from k2.catalog import default_catalog_properties
from k2.lake.offsets import read_offsets
from k2.lake.schemas import TABLES
from k2.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Worker:
    """One ``faust -A k2.app worker`` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.port = int(env["K2_WEB_PORT"])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "faust"), "-A", "k2.app", "worker", "-l", "info"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_started(self, timeout_s: float = 180.0) -> None:
        """Until "Worker ready". After a SIGKILL the group waits out the dead member's session (60 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if "Worker ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def crash(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        self.proc.kill()
        self.proc.wait()


class K2Env:
    """Settings, commands and lake access of one isolated K2 deployment."""

    def __init__(self, stack: Any, tmp: Path, catalog_kind: str, **overrides: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.catalog_kind = catalog_kind
        self.stack = stack
        k2 = {
            "K2_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "K2_SCHEMA_REGISTRY_URL": stack.schema_registry_url,
            "K2_TRADES_TOPIC": f"t{run}.trades",
            "K2_QUOTES_TOPIC": f"t{run}.quotes",
            "K2_REFERENCE_TOPIC": f"t{run}.reference",
            "K2_REJECTS_TOPIC": f"t{run}.rejects",
            "K2_APP_ID": f"k2-test-{run}",
            "K2_VAR_DIR": str(tmp / "var"),
            "K2_WEB_PORT": str(free_port()),
            "K2_FLUSH_INTERVAL_S": "1",
            **overrides,
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "PYICEBERG_"))}
        self.env.update(k2)
        self.env["AWS_EC2_METADATA_DISABLED"] = "true"
        if catalog_kind == "rest":
            for key, value in stack.pyiceberg_properties().items():
                self.env[f"PYICEBERG_CATALOG__K2__{key.upper().replace('.', '__').replace('-', '_')}"] = value
        self.settings = Settings(**{k[3:].lower(): v for k, v in k2.items()})  # type: ignore[arg-type]
        self.workers: list[Worker] = []

    def k2(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "k2"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"k2 {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def replay_in_background(self, *args: str) -> subprocess.Popen[bytes]:
        """``k2 replay ARGS --no-progress`` as a process of its own, to run while workers come and go."""
        return subprocess.Popen(
            [str(BIN / "k2"), "replay", *args, "--no-progress"], env=self.env, stdout=subprocess.DEVNULL
        )

    def wait_first_commit(self, table: str = "market_data.trades", timeout_s: float = 120.0) -> None:
        """Until ``table`` has a snapshot (something was committed), or ``timeout_s`` passed."""
        catalog = self.catalog()
        deadline = time.monotonic() + timeout_s
        while catalog.load_table(table).current_snapshot() is None and time.monotonic() < deadline:
            time.sleep(0.2)

    def start_worker(self, *, wait: bool = True) -> Worker:
        """Start a worker; with ``wait=False`` return at once (to watch it come up)."""
        worker = Worker(self.env, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        if wait:
            worker.wait_started()
        return worker

    def catalog(self) -> Catalog:
        if self.catalog_kind == "rest":
            return load_catalog("k2", **self.stack.pyiceberg_properties())
        return SqlCatalog("k2", **default_catalog_properties(Path(self.env["K2_VAR_DIR"])))

    def drop_tables(self) -> None:
        """Start from empty tables (the REST catalog is shared by every test run)."""
        catalog = self.catalog()
        for name in TABLES:
            with contextlib.suppress(NoSuchTableError):
                catalog.purge_table(name)

    def landed(self) -> dict[tuple[str, int], int]:
        catalog = self.catalog()
        out: dict[tuple[str, int], int] = {}
        for name in TABLES:
            for tp, off in read_offsets(catalog.load_table(name)).items():
                out[tp] = max(off, out.get(tp, -1))
        return out

    def waiting(self) -> dict[tuple[str, int], int]:
        """Per source partition with records not in the lake yet: the first of them (control markers and
        aborted records above the lake's mark are nothing to wait for)."""
        ends = end_offsets(self.settings, self.settings.source_topics)
        landed = self.landed()
        starts = {tp: landed.get(tp, -1) + 1 for tp, end in ends.items() if landed.get(tp, -1) + 1 < end}
        with KafkaLog(self.settings) as log:
            found = log.first_records(starts, ends)
        return {tp: first.offset for tp, first in found.items() if first is not None}

    def wait_landed(self, timeout_s: float = 120.0, until: Callable[[], bool] | None = None) -> None:
        """Wait until every record of the source topics is recorded in some table."""
        deadline = time.monotonic() + timeout_s
        waiting: dict[tuple[str, int], int] = {}
        while time.monotonic() < deadline:
            waiting = self.waiting()
            if not waiting and (until is None or until()):
                return
            for w in self.workers:
                if w.proc.poll() is not None and w.proc.returncode not in (0, -9, -15):
                    raise AssertionError(f"worker died ({w.proc.returncode}):\n{w.tail()}")
            time.sleep(1.0)
        tails = "\n".join(w.tail(40) for w in self.workers)
        raise AssertionError(f"lake did not catch up in {timeout_s}s: first records waiting {waiting}\n{tails}")

    def get(self, path: str) -> str:
        """A view of the newest worker's web server (``/k2/lag``, ``/metrics``...)."""
        with _NO_PROXY.open(f"http://127.0.0.1:{self.workers[-1].port}{path}", timeout=10) as resp:
            body: str = resp.read().decode()
            return body

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels``, from the newest worker's ``/metrics``."""
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def close(self) -> None:
        for w in self.workers:
            w.stop()
