"""bench/memprobe.py: a worker's resident memory by kind of mapping, read from an smaps text."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.memprobe import mapping_kind, smaps_by_kind  # noqa: E402

MIB = 1 << 20


def _mapping(start: int, size: int, perms: str, name: str, rss_kib: int, lazy_kib: int = 0) -> list[str]:
    return [
        f"{start:x}-{start + size:x} {perms} 00000000 00:00 0 {name}".rstrip(),
        f"Size: {size // 1024} kB",
        f"Rss: {rss_kib} kB",
        f"LazyFree: {lazy_kib} kB",
    ]


def test_each_kind_of_mapping_is_told_apart() -> None:
    assert mapping_kind(0x1000, 0x2000, "rw-p", "[heap]", False) == "heap"
    assert mapping_kind(0x1000, 0x2000, "r-xp", "/usr/lib/libc.so.6", False) == "files"
    assert mapping_kind(0x1000, 0x2000, "rw-p", "[stack]", False) == "other"
    assert mapping_kind(0x1000, 0x2000, "---p", "", False) == "none"
    assert mapping_kind(0, 1 << 30, "rw-p", "", False) == "mimalloc"
    assert mapping_kind(3 * MIB, 4 * MIB, "rw-p", "", False) == "pyarenas"
    assert mapping_kind(128 * MIB, 140 * MIB, "rw-p", "", False) == "arenas"  # a glibc thread heap, 64 MiB-aligned
    assert mapping_kind(130 * MIB, 138 * MIB, "rw-p", "", True) == "stacks"
    assert mapping_kind(130 * MIB, 138 * MIB, "rw-p", "", False) == "anon"


def test_resident_memory_is_summed_by_kind_and_a_stack_is_the_mapping_above_a_guard_page() -> None:
    lines = [
        *_mapping(0x10000, 2 * MIB, "rw-p", "[heap]", 1024),
        *_mapping(64 * MIB, 12 * MIB, "rw-p", "", 2048),  # glibc thread arena
        *_mapping(64 * MIB + 12 * MIB, 52 * MIB, "---p", "", 0),  # its reserved rest
        *_mapping(200 * MIB, 4096, "---p", "", 0),  # a guard page...
        *_mapping(200 * MIB + 4096, 8 * MIB, "rw-p", "", 512),  # ...under a thread's stack
        *_mapping(300 * MIB + 4096, 6 * MIB, "rw-p", "", 3072, lazy_kib=1024),  # jemalloc's, say
    ]
    assert smaps_by_kind(lines) == {
        "maps_anon_mib": 3.0,
        "maps_arenas_mib": 2.0,
        "maps_heap_mib": 1.0,
        "maps_lazyfree_mib": 1.0,
        "maps_stacks_mib": 0.5,
    }
