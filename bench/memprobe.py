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
* ``gc`` object counts of the 10 types that grew most since then;
* with ``BENCH_MEMPROBE_TRIM=1``, ``rss_after_trim_mib``: the RSS after glibc's ``malloc_trim(0)``,
  called after each line (a probe of what glibc keeps free; it changes the worker it measures).

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["main", "mapping_kind", "probe", "smaps_by_kind"]


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


def _malloc_trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status() -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss_mib"] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(value)
    return out


def mapping_kind(start: int, end: int, perms: str, name: str, after_guard: bool) -> str:
    """What one mapping of ``/proc/<pid>/smaps`` holds. Pure.

    glibc's main heap; its thread arenas (heaps of at most 64 MiB at a 64 MiB boundary); thread stacks
    (right above a one-page guard); Arrow's mimalloc arena (its 1 GiB reservations); Python's object
    arenas (1 MiB anonymous maps in 3.11); other anonymous memory (jemalloc's: Arrow's and polars');
    files (code); ``none`` for inaccessible reservations and guards.
    """
    size = end - start
    if name == "[heap]":
        return "heap"
    if name.startswith("/"):
        return "files"
    if name:
        return "other"
    if perms.startswith("---"):
        return "none"
    if size >= 512 << 20:
        return "mimalloc"
    if size == 1 << 20:
        return "pyarenas"
    if start % (64 << 20) == 0 and size <= 64 << 20:
        return "arenas"
    return "stacks" if after_guard else "anon"


def smaps_by_kind(lines: Iterable[str]) -> dict[str, float]:
    """Resident MiB per :func:`mapping_kind` (``maps_<kind>_mib``), and ``maps_lazyfree_mib``: pages freed
    with MADV_FREE, still resident until the kernel needs them. Pure (``lines`` of an smaps file)."""
    kinds: Counter[str] = Counter()
    kind = "files"
    guard_end = -1
    for line in lines:
        head = line.split(" ", 1)[0]
        if "-" in head and head[0] in "0123456789abcdef":
            fields = line.split()
            start, end = (int(x, 16) for x in head.split("-"))
            kind = mapping_kind(start, end, fields[1], fields[5] if len(fields) > 5 else "", start == guard_end)
            if kind == "none" and end - start == 4096:
                guard_end = end
        elif line.startswith("Rss:"):
            kinds[kind] += int(line.split()[1])
        elif line.startswith("LazyFree:"):
            kinds["lazyfree"] += int(line.split()[1])
    kinds.pop("none", None)
    return {f"maps_{k}_mib": round(v / 1024, 1) for k, v in sorted(kinds.items())}


def _maps() -> dict[str, float]:
    with open("/proc/self/smaps") as f:
        return smaps_by_kind(f)


def _types() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects())


def probe(out: Path, every_s: float, warmup_s: float, trace: bool, trim: bool = False) -> None:
    """Append one JSON line to ``out`` every ``every_s`` seconds, for ever (a daemon thread); with ``trim``,
    glibc's ``malloc_trim(0)`` after each line, and the RSS it left (what glibc held free, given back)."""
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
        if trim:
            _malloc_trim()
            line["rss_after_trim_mib"] = _status()["rss_mib"]
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
    trim = os.environ.get("BENCH_MEMPROBE_TRIM") == "1"
    threading.Thread(target=probe, args=(out, every, warmup, trace, trim), daemon=True, name="memprobe").start()
    from faust.cli.faust import cli

    sys.argv[0] = "faust"
    cli()


if __name__ == "__main__":
    main()
