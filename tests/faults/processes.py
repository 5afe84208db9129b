"""The K2 processes a deployment runs: ``faust`` workers, ``k2 replay`` in the background, the RSS monitor."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.config import BIN

__all__ = ["Replay", "RssMonitor", "Worker", "free_port", "vm_hwm_kb"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
