"""A long run at a steady input rate: does a system's memory stay flat while it keeps up?

The throughput runs last a minute or two; a leak, or state that grows with the number of
commits (snapshot metadata, offsets maps, caches), shows only over longer runs. Here the
system reads fresh topics while ``k2 replay --rate R`` produces for about ``seconds``; its
resident set (VmRSS, summed over its processes) is sampled every ``every_s`` seconds. The
verdict compares the second half of the run with the first: the growth per minute of a
least-squares line through the second half, and the peak of each half.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.lakecheck import exactness
from bench.procs import wait_until
from bench.runners import System

__all__ = ["soak", "trend"]


def trend(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Peak of each half, and the second half's growth in MiB per minute (least squares). Pure."""
    if len(samples) < 4:
        raise ValueError("a trend needs at least four samples")
    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    n = len(second)
    mean_t = sum(t for t, _ in second) / n
    mean_r = sum(r for _, r in second) / n
    var = sum((t - mean_t) ** 2 for t, _ in second)
    slope = 0.0 if var == 0 else sum((t - mean_t) * (r - mean_r) for t, r in second) / var
    return {
        "first_half_peak_mib": round(max(r for _, r in first), 1),
        "second_half_peak_mib": round(max(r for _, r in second), 1),
        "second_half_growth_mib_per_min": round(slope * 60, 2),
    }


def soak(
    system: System,
    produce: Callable[[int], list[str]],
    env: dict[str, str],
    ends: Callable[[], dict[tuple[str, int], int]],
    rate: float,
    seconds: float,
    events_per_pass: int,
    timeout_s: float,
    every_s: float = 10.0,
) -> dict[str, Any]:
    """Run ``system`` on live input at ``rate`` for about ``seconds``; its memory over time and its exactness.

    ``produce(passes)`` is the ``k2`` command line that produces the input (run with ``env``);
    ``ends()`` reads the topics' end offsets once it is done.
    """
    system.prepare()
    system.start()
    wait_until(f"{system.name} ready", system.ready, 240, alive=[system.check])
    passes = max(1, math.ceil(rate * seconds / events_per_pass))
    cmd = [sys.executable, "-m", "k2.cli.main", *produce(passes), "--rate", f"{rate:g}"]
    producer = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    begin = time.monotonic()
    samples: list[tuple[float, float]] = []
    try:
        while producer.poll() is None:
            system.check()
            samples.append((time.monotonic() - begin, system.meter.sample()))
            if time.monotonic() - begin > seconds * 3 + 120:
                raise RuntimeError(f"the producer of the soak did not finish within {seconds * 3 + 120:.0f}s")
            time.sleep(every_s)
        if producer.returncode != 0:
            raise RuntimeError(f"the soak's producer exited {producer.returncode}: {producer.stderr.read()[-2000:]!r}")
    finally:
        if producer.poll() is None:
            producer.kill()
    produced_s = time.monotonic() - begin
    system.ends = ends()
    wait_until(
        f"{system.name}: all {system.total:,} soak events",
        lambda: system.progress() >= system.total and system.complete(),
        timeout_s,
        alive=[system.check],
        poll_s=1.0,
    )
    system.meter.sample()
    system.stop()
    verdict = exactness(system.catalog(), system.lineages(), system.ends)
    return (
        {
            "rate": rate,
            "seconds": round(produced_s, 1),
            "events": system.total,
            "samples": [[round(t, 1), round(r, 1)] for t, r in samples],
        }
        | trend(samples)
        | verdict
    )
