#!/usr/bin/env python3
"""A worker with a memory probe: where its resident set goes, written as JSON lines while it runs.

Debug only, never in production: ``python -m bench.memprobe -A k2.app worker -l info`` runs
faust's command line as ``faust`` does, plus a daemon thread that every
``BENCH_MEMPROBE_EVERY_S`` seconds (60) appends one line to ``BENCH_MEMPROBE_OUT``:

* ``rss_mib`` (VmRSS), ``threads``;
* resident MiB by kind of mapping (``maps_*``: glibc's main heap, Arrow's mimalloc arena,
  Python's object arenas, other anonymous memory, files);
* glibc's heap (``mallinfo2``: ``arena`` in use by the main and thread arenas, ``in_use``,
  ``free`` kept by malloc, ``mmap`` blocks), the part of RSS Python and C libraries share;
* Arrow's pool (``pa.total_allocated_bytes()``, its backend);
* with ``BENCH_MEMPROBE_TRACE=1``, Python's own heap (``tracemalloc``: traced bytes, and the 15
  source lines whose allocations grew most since the first probe after warm-up);
* ``gc`` object counts of the 10 types that grew most since then.

Python's heap growing says a cache or a structure grows; RSS growing with neither Python's
heap nor Arrow's pool is the allocator holding on to freed memory (fragmentation, arenas).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["main", "probe"]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mallinfo() -> dict[str, float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    info = fn()
    mib = 1 << 20
    return {
        "arena_mib": round(info.arena / mib, 1),
        "in_use_mib": round(info.uordblks / mib, 1),
        "free_mib": round(info.fordblks / mib, 1),
        "mmap_mib": round(info.hblkhd / mib, 1),
    }


def _status() -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss_mib"] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(value)
    return out


def _maps() -> dict[str, float]:
    """Resident MiB by kind of mapping: glibc's main heap, Arrow's mimalloc arena (the 1 GiB reservations),
    Python's object arenas (1 MiB anonymous maps in 3.11), other anonymous memory, and files (code)."""
    kinds: Counter[str] = Counter()
    kind = "files"
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                fields = line.split()
                start, end = (int(x, 16) for x in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                size = end - start
                if name == "[heap]":
                    kind = "heap"
                elif name.startswith("/"):
                    kind = "files"
                elif name:
                    kind = "other"
                elif size >= 512 << 20:
                    kind = "mimalloc"
                elif size == 1 << 20:
                    kind = "pyarenas"
                else:
                    kind = "anon"
            elif line.startswith("Rss:"):
                kinds[kind] += int(line.split()[1])
    return {f"maps_{k}_mib": round(v / 1024, 1) for k, v in sorted(kinds.items())}


def _types() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects())


def probe(out: Path, every_s: float, warmup_s: float, trace: bool) -> None:
    """Append one JSON line to ``out`` every ``every_s`` seconds, for ever (a daemon thread)."""
    import tracemalloc

    import pyarrow as pa

    begin = time.monotonic()
    base_snapshot: Any = None
    base_types: Counter[str] | None = None
    while True:
        time.sleep(every_s)
        line: dict[str, Any] = {"t": round(time.monotonic() - begin, 1)} | _status() | _maps() | _mallinfo()
        line["arrow_mib"] = round(pa.total_allocated_bytes() / (1 << 20), 1)
        line["arrow_pool"] = pa.default_memory_pool().backend_name
        line["gc_objects"] = len(gc.get_objects())
        types = _types()
        if trace and tracemalloc.is_tracing():
            line["traced_mib"] = round(tracemalloc.get_traced_memory()[0] / (1 << 20), 1)
        if line["t"] >= warmup_s:
            if base_types is None:
                base_types = types
                if trace and tracemalloc.is_tracing():
                    base_snapshot = tracemalloc.take_snapshot()
            else:
                grown = (types - base_types).most_common(10)
                line["types_grown"] = grown
                if base_snapshot is not None:
                    diff = tracemalloc.take_snapshot().compare_to(base_snapshot, "lineno")
                    line["lines_grown"] = [
                        [str(d.traceback[0]), round(d.size_diff / 1024, 1), d.count_diff] for d in diff[:15]
                    ]
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")


def main() -> None:
    out = Path(os.environ.get("BENCH_MEMPROBE_OUT", "memprobe.jsonl"))
    trace = os.environ.get("BENCH_MEMPROBE_TRACE") == "1"
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    every = float(os.environ.get("BENCH_MEMPROBE_EVERY_S", "60"))
    warmup = float(os.environ.get("BENCH_MEMPROBE_WARMUP_S", "120"))
    threading.Thread(target=probe, args=(out, every, warmup, trace), daemon=True, name="memprobe").start()
    from faust.cli.faust import cli

    sys.argv[0] = "faust"
    cli()


if __name__ == "__main__":
    main()
