#!/usr/bin/env python3
"""Where one K2 worker's time goes while it lands a backlog: py-spy on `bench/e2e_throughput.py`'s worker.

Starts the end-to-end bench (its own topics, group and embedded catalog), attaches py-spy
to the worker once it is consuming, samples it for ``--seconds``, and prints the busy
share of each thread and the heaviest functions of the main thread (inclusive samples,
K2's own and the libraries'), so that what bounds the rate is read off a profile, not guessed:

    .venv/bin/python bench/profile_worker.py --events 1200000 --seconds 40

Needs the local stack (`make stack-up`) and py-spy (a dev dependency; root or ptrace rights).
The raw samples stay in ``--raw`` (collapsed stacks, one per line, for flamegraph tools).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bench_worker(marker: str, timeout_s: float) -> int:
    """The pid of the faust worker whose environment carries ``marker`` (the bench's app id prefix)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if b"k2.app" in cmd and b"worker" in cmd and marker.encode() in env:
                return int(entry.name)
        time.sleep(0.5)
    raise SystemExit(f"no K2 bench worker appeared within {timeout_s:.0f}s")


#: Leaf frames that are waits, not work (py-spy samples a thread blocked in them as active).
_WAITS = frozenset({"_worker", "EpollSelector.select", "Condition.wait", "select"})


def summarise(raw: Path, seconds: float, rate: int, top: int) -> str:
    """Busy share per thread and the main thread's heaviest functions, from py-spy's collapsed stacks."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        if frames[-1].split(" (")[0] in _WAITS:
            continue  # a thread blocked in a wait py-spy could not tell from work
        threads[frames[0]] += n
        if "MainThread" not in frames[0]:
            continue
        seen: set[str] = set()
        for frame in frames[1:]:
            name = frame.split(" (")[0]
            where = frame.split("(")[-1].split(":")[0].rsplit("/", 1)[-1] if "(" in frame else ""
            key = f"{name} ({where})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    full = seconds * rate
    out = [f"samples per fully busy thread: {full:.0f} ({rate}/s for {seconds:.0f}s; idle waits are not sampled)"]
    out += [f"{n / full:6.1%}  {name}" for name, n in threads.most_common(12)]
    main = max((n for name, n in threads.items() if "MainThread" in name), default=1)
    out.append(f"\nmain thread, inclusive, share of its busy samples ({main}):")
    shown = 0
    for name, n in inclusive.most_common():
        if n >= 0.95 * main:
            continue  # the trunk: the event loop and faust's command
        out.append(f"{n / main:6.1%}  {name}")
        shown += 1
        if shown == top:
            break
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_200_000)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to sample (default 40)")
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds after the worker starts (default 12)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--raw", type=Path, default=ROOT / "var" / "bench" / "worker-profile.txt")
    args = parser.parse_args()
    pyspy = BIN / "py-spy"
    if not pyspy.exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy (it is in the dev extra)", file=sys.stderr)
        return 2
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "e2e_throughput.py"), "--events", str(args.events)],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        pid = bench_worker("k2-bench-", timeout_s=300)
        time.sleep(args.warmup)
        subprocess.run(
            [
                *(str(pyspy), "record", "--pid", str(pid), "--duration", str(int(args.seconds))),
                *("--rate", str(args.rate), "--threads", "--format", "raw", "-o", str(args.raw)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bench.wait(1800)
    finally:
        if bench.poll() is None:
            bench.terminate()
    print()
    print(summarise(args.raw, args.seconds, args.rate, args.top))
    return bench.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
