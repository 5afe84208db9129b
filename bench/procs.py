"""Processes of a benchmarked system: started in their own session, measured from /proc, killed as a group.

Every system the benchmark runs is one or more process trees, each started with
``start_new_session=True`` so that its session id is the leader's pid: :class:`Meter`
finds every process of those sessions in /proc (threads are counted in their process),
and keeps the last sample of each, so a process that exited or was killed still counts
with what it had used when last seen (sampling every half second or so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Meter", "Sample", "Timeout", "kill_session", "spawn", "stop_session", "wait_until"]

TICKS = os.sysconf("SC_CLK_TCK")


class Timeout(RuntimeError):
    """A bounded wait ran out; the message says what was awaited and how far it got."""


@dataclass(frozen=True)
class Sample:
    cpu_s: float
    """user + sys of the process, plus what its reaped children used (cutime + cstime)."""
    hwm_mib: float
    """VmHWM: the process's peak resident set."""
    rss_mib: float = 0.0
    """VmRSS: its resident set when sampled."""


def _read(pid: int) -> tuple[int, Sample] | None:
    """(session id, sample) of a live process, None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of stat(5)
    sid = int(fields[3])
    cpu = sum(int(x) for x in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    kib = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith(("VmHWM:", "VmRSS:"))}
    if "VmHWM" not in kib:
        return None
    return sid, Sample(cpu, int(kib["VmHWM"]) / 1024, int(kib.get("VmRSS", 0)) / 1024)


@dataclass
class Meter:
    """CPU seconds and peak RSS of every process of some sessions, over the sessions' whole life."""

    sessions: set[int] = field(default_factory=set)
    last: dict[int, Sample] = field(default_factory=dict)
    session_of: dict[int, int] = field(default_factory=dict)

    def watch(self, leader_pid: int) -> None:
        self.sessions.add(leader_pid)

    def sample(self) -> float:
        """Read every live process of the sessions; returns their summed resident set now (MiB)."""
        if not self.sessions:
            return 0.0
        resident = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            got = _read(int(entry))
            if got is not None and got[0] in self.sessions:
                self.last[int(entry)] = got[1]
                self.session_of[int(entry)] = got[0]
                resident += got[1].rss_mib
        return resident

    @property
    def cpu_s(self) -> float:
        return sum(s.cpu_s for s in self.last.values())

    def cpu_s_of(self, leader_pid: int) -> float:
        """CPU seconds of one session's processes (as :attr:`cpu_s`, for the session ``leader_pid`` leads)."""
        return sum(s.cpu_s for pid, s in self.last.items() if self.session_of.get(pid) == leader_pid)

    @property
    def rss_max_mib(self) -> float:
        return max((s.hwm_mib for s in self.last.values()), default=0.0)

    @property
    def rss_sum_mib(self) -> float:
        return sum(s.hwm_mib for s in self.last.values())

    @property
    def processes(self) -> int:
        return len(self.last)


def spawn(
    cmd: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path, meter: Meter | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own, output appended to ``log``; watched by ``meter``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if meter is not None:
        meter.watch(proc.pid)
    return proc


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole session (it leads its own), as a crash would; reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def stop_session(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the session, SIGKILL whatever is left after ``timeout_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    kill_session(proc)  # also whatever the leader left behind in its session


def wait_until(
    what: str,
    done: Callable[[], bool],
    timeout_s: float,
    *,
    poll_s: float = 0.5,
    alive: Iterable[Callable[[], None]] = (),
    progress: Callable[[], str] = lambda: "",
    meter: Meter | None = None,
) -> float:
    """Poll ``done`` until true; the wall time (time.time()) it became true.

    Each round samples ``meter`` and calls every ``alive`` check (which raises when its
    system died).

    Raises:
        Timeout: ``timeout_s`` passed first; the message ends with ``progress()``.
    """
    begin = time.monotonic()
    while True:
        if meter is not None:
            meter.sample()
        if done():
            return time.time()
        for check in alive:
            check()
        if time.monotonic() - begin > timeout_s:
            tail = progress()
            raise Timeout(f"timed out after {timeout_s:.0f}s waiting for {what}" + (f": {tail}" if tail else ""))
        time.sleep(poll_s)
