#!/usr/bin/env python3
"""Start or stop one K2 worker (`faust -A k2.app worker`) in the background, for `make run`.

Stdlib only. Logs to var/log/worker.log, pid in var/run/worker.pid. `start` waits until the
worker's web server answers (it only answers once the app has started), and says what is
wrong when it does not: the port is taken, the worker died (with the end of its log).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = Path(os.environ.get("K2_VAR_DIR", ROOT / "var")).resolve()
PID = VAR / "run" / "worker.pid"
LOG = VAR / "log" / "worker.log"
HOST = os.environ.get("K2_WEB_HOST", "127.0.0.1")
PORT = int(os.environ.get("K2_WEB_PORT", "6066"))
FAUST = Path(os.environ.get("K2_FAUST", ROOT / ".venv" / "bin" / "faust"))
#: The image's allocators (Dockerfile; README, Memory), unless the environment says otherwise.
ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "MALLOC_ARENA_MAX": "2"}


def _running() -> int | None:
    try:
        pid = int(PID.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def _port_taken() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, PORT)) == 0


def _answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORT}/", timeout=2) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:  # it answered, if only with an error page
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _tail(n: int = 30) -> str:
    try:
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def start(timeout_s: float) -> int:
    pid = _running()
    if pid is not None:
        print(f"worker   already running (pid {pid}), web http://{HOST}:{PORT}/, log {LOG}")
        return 0
    if not FAUST.exists():
        print(f"worker   {FAUST} not found: run `make venv` first", file=sys.stderr)
        return 1
    if _port_taken():
        print(
            f"worker   port {PORT} on {HOST} is already in use by another process; stop it "
            f"(`ss -ltnp 'sport = :{PORT}'` shows which) or set K2_WEB_PORT to a free port",
            file=sys.stderr,
        )
        return 1
    LOG.parent.mkdir(parents=True, exist_ok=True)
    PID.parent.mkdir(parents=True, exist_ok=True)
    env = {**ALLOCATOR_ENV, **os.environ, "K2_VAR_DIR": str(VAR)}
    with LOG.open("ab") as log:
        proc = subprocess.Popen(
            [str(FAUST), "-A", "k2.app", "worker", "-l", "info"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    PID.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"worker   exited with code {proc.returncode} while starting; end of {LOG}:", file=sys.stderr)
            print(_tail(), file=sys.stderr)
            return 1
        if _answers():
            print(f"worker   started (pid {proc.pid}), web http://{HOST}:{PORT}/, log {LOG}")
            return 0
        time.sleep(0.5)
    print(f"worker   did not answer on {HOST}:{PORT} within {timeout_s:.0f}s; end of {LOG}:", file=sys.stderr)
    print(_tail(), file=sys.stderr)
    return 1


def stop(timeout_s: float) -> int:
    pid = _running()
    if pid is None:
        PID.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    PID.unlink(missing_ok=True)
    print(f"worker   stopped (pid {pid})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")
    args = parser.parse_args()
    return start(args.timeout) if args.action == "start" else stop(args.timeout)


if __name__ == "__main__":
    sys.exit(main())
