"""Faults on the stack's services (kafka, registry, s3, rest), done by ``deploy/local/stack.py``."""

from __future__ import annotations

import contextlib
import subprocess
import sys

from tests.faults.config import ROOT, STACK_SCRIPT

__all__ = ["Services"]


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
