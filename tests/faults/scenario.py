"""Fault scenarios: a fresh deployment, faults with timestamps, and a bounded, judged ending.

K2's law: every offset of the three source topics lands exactly once in exactly one
table (a market row or a reject). The suite proves or disproves it from the outside
only: K2 runs as users run it (``k2 init``, ``k2 replay``, ``faust -A k2.app worker``
processes), faults are done to processes and services, and the verdict comes from Kafka
and the lake. Nothing in the harness imports ``k2``, so the suite judges a rewritten worker
the same way; the one exception is :func:`~tests.faults.law.check_law`, the single place the
law is decided: by default (``K2_FAULTS_LAW=both``) it reads the rows itself and runs the
``k2 audit`` command, and both must hold; ``lake`` reads the rows and asks
``tests/integration/law.py`` (which needs K2's settings object); ``audit`` runs the command alone.

A scenario (see ``tests/faults/test_faults.py``) is a ``with`` block; leaving it concludes::

    def test_something(scenario: ScenarioFactory) -> None:
        with scenario("x_something", "what it does, in a line") as sc:
            sc.start(workers=1)                      # fresh tables, k2 init, a worker
            sc.replay(SAMPLE, "--loop", "3", "--rate", "400")
            sc.wait_landing(1000)                    # the flow is reaching the lake
            with sc.fault("registry down"):          # timestamps for the report
                sc.services.stop("registry")
                sc.sleep(20)
                sc.services.start("registry")
        # here: waited (bounded), judged (law and values), reported; the test failed if anything was wrong

Poison a scenario makes goes into ``sc.expectations`` (what each position must become) and
``sc.labels`` (how the report counts lost or doubled positions).

Every wait is bounded and ends in a verdict: a lake that stops moving for
``K2_FAULTS_STALL_S`` seconds while behind Kafka is a stall, which fails the scenario.
Times are measured and reported, never asserted.

The rest of the harness, one module per thing: ``config.py`` (:class:`Config`, the paths),
``services.py`` (faults on the stack's services), ``processes.py`` (workers and replays),
``deployment.py`` (one K2 on the stack: topics, commands, what its lake says), ``lake.py``
(K2's tables and their rows), ``law.py`` (:func:`check_law`), ``values.py``
(:func:`check_values`), ``ranges.py`` (offsets as runs) and ``report.py`` (the report).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.faults.config import Config
from tests.faults.deployment import Deployment
from tests.faults.lake import QUOTES, REJECTS, TRADES, gap_positions, reference_ledger, scan_rows
from tests.faults.law import LawVerdict, check_law
from tests.faults.processes import Replay, RssMonitor, Worker
from tests.faults.ranges import format_ranges, offset_count, position_ranges
from tests.faults.report import ScenarioReport, append_report, code_under_test
from tests.faults.services import Services
from tests.faults.source import TP, Position, read_topics, with_records
from tests.faults.takeover import Takeover, measure_takeover
from tests.faults.values import ValueVerdict, check_values

__all__ = ["FaultMark", "Scenario", "ScenarioFactory", "Stall", "bounded"]

T = TypeVar("T")


def bounded(fn: Callable[[], T], timeout_s: float, default: T) -> T:
    """``fn()`` in a thread, or ``default`` after ``timeout_s`` (a frozen server must not hang the suite)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=timeout_s)
    except Exception:
        return default
    finally:
        pool.shutdown(wait=False)


@dataclass
class FaultMark:
    """A fault's timing, in seconds from the scenario's start of flow."""

    what: str
    began_s: float
    cleared_s: float | None = None


class Stall(Exception):
    """The lake stopped moving while behind Kafka."""


class _NotCompared(Exception):
    """The values are not compared (``Scenario.judge_rows`` is off)."""


class Scenario:
    """One fault scenario: a fresh deployment, faults with timestamps, and a bounded, judged ending."""

    def __init__(self, name: str, title: str, stack: Any, tmp: Path, config: Config, **overrides: str) -> None:
        self.name = name
        self.title = title
        self.config = config
        self.tmp = tmp
        self.rng = random.Random(config.seed ^ zlib.crc32(name.encode()))
        self.services = Services()
        self.env = Deployment(stack, tmp, **overrides)
        self._side: list[Deployment] = []
        self.expectations: dict[Position, str] = {}
        #: What a position holds, for the report's breakdown of lost and doubled offsets (default "source event").
        self.labels: dict[Position, str] = {}
        self.faults: list[FaultMark] = []
        self.crashes: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.restart_on_crash = True
        self.max_restarts = 12
        #: False for a flow too big to read back row by row (millions of events): progress is read from the
        #: lake's marks, the law is decided by ``k2 audit`` alone, and the values are not compared.
        self.judge_rows = True
        self.takeovers: list[Takeover] = []
        #: Seconds without any progress, while behind Kafka, that make a stall (see ``wait_caught_up``).
        self.stall_s = config.stall_s
        self._t0 = time.monotonic()
        self._flow_t0: float | None = None
        self._started_at = datetime.now().astimezone().isoformat(timespec="seconds")
        self._rss = RssMonitor(lambda: self.env.workers)
        self._concluded = False

    # Timing ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the flow started (or since the scenario began, before that)."""
        return time.monotonic() - (self._flow_t0 if self._flow_t0 is not None else self._t0)

    def flow_started(self) -> None:
        if self._flow_t0 is None:
            self._flow_t0 = time.monotonic()

    @contextlib.contextmanager
    def fault(self, what: str) -> Iterator[FaultMark]:
        """Time a fault: from entering the block to leaving it (the service is back, the worker restarted)."""
        mark = self.fault_begin(what)
        try:
            yield mark
        finally:
            self.fault_end(mark)

    def fault_begin(self, what: str) -> FaultMark:
        mark = FaultMark(what, round(self.now(), 2))
        self.faults.append(mark)
        print(f"  [{self.name} +{mark.began_s:.1f}s] fault: {what}", flush=True)
        return mark

    def fault_end(self, mark: FaultMark) -> None:
        mark.cleared_s = round(self.now(), 2)

    # Set-up ---------------------------------------------------------------------------------

    def start(self, workers: int = 1, *, wait: bool = True) -> list[Worker]:
        """Fresh tables, ``k2 init`` (topics, schemas, tables), then ``workers`` workers."""
        self.env.drop_tables()
        self.env.k2("init")
        started = [self.env.start_worker() for _ in range(workers)]
        if wait:
            for worker in started:
                worker.wait_ready()
        return started

    def side_deployment(self, name: str) -> Deployment:
        """Another deployment (own topics) on the same stack, e.g. staging topics; cleaned up with the scenario."""
        dep = Deployment(self.env.stack, self.tmp / name)
        self._side.append(dep)
        return dep

    def replay(self, *args: str | Path) -> Replay:
        """``k2 replay ARGS`` in the background; the flow starts now."""
        self.flow_started()
        return self.env.replay(*args)

    # Waiting ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Between waits: notice workers that died on their own, and restart them as an orchestrator would."""
        for worker in list(self.env.workers):
            if worker.alive() or worker.expected_exit or worker.reported:
                continue
            worker.reported = True
            crash = {
                "worker": worker.name,
                "at_s": round(self.now(), 1),
                "returncode": worker.proc.returncode,
                "reason": worker.crash_reason(),
                "log": str(worker.log),
            }
            self.crashes.append(crash)
            print(f"  [{self.name} +{crash['at_s']}s] {worker.name} exited {crash['returncode']}: {crash['reason']}")
            if self.restart_on_crash and len(self.crashes) <= self.max_restarts:
                replacement = self.env.start_worker()
                print(f"  [{self.name}] restarted as {replacement.name}", flush=True)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tick()
            time.sleep(min(0.5, left))

    def landed_rows(self) -> int:
        """Offsets the lake says it holds (from the marks): a cheap progress number."""
        marks = bounded(self.env.marks, 30.0, {})
        return sum(m + 1 for m in marks.values())

    def wait_landing(self, min_offsets: int = 1, timeout_s: float = 240.0) -> float:
        """Until the lake holds at least ``min_offsets`` offsets: the flow reaches the lake ("during flow")."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            self.tick()
            if self.landed_rows() >= min_offsets:
                return self.now()
            time.sleep(1.0)
        raise Stall(f"nothing reached the lake within {timeout_s:.0f}s (wanted {min_offsets} offsets)")

    def wait_worker_ready(self, timeout_s: float = 300.0) -> float:
        """Until a live worker has said "Worker ready" (its group settled): the scenario time it is seen."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            self.tick()
            if any(w.ready() for w in self.env.live_workers()):
                return self.now()
            time.sleep(0.5)
        raise Stall(f"no worker became ready within {timeout_s:.0f}s")

    def wait_replays(self) -> float:
        """Until every background replay has finished (bounded by the stall limit); the flow's end."""
        began = time.monotonic()
        limit = self.config.cap_s
        while any(r.running() for r in self.env.replays):
            if time.monotonic() - began > limit:
                raise Stall(f"a replay still runs after {limit:.0f}s")
            self.tick()
            time.sleep(0.5)
        for replay in self.env.replays:
            if replay.proc.returncode != 0:
                self.notes.append(
                    f"k2 replay {' '.join(replay.args)} exited {replay.proc.returncode}: {replay.tail(3)!r}"
                )
        return self.now()

    def wait_caught_up(self) -> tuple[float | None, str | None]:
        """Until every source record is in the lake's rows: (time caught up, None), or (None, why it stalled).

        Progress is read from the snapshot marks (cheap) and confirmed from the rows. The marks cover a
        partition when no committed record waits above them (what lies between them and the end may be
        control markers or aborted records); its rows are complete when they number its committed records
        below the end (counted once the marks cover it). The lake "settles" when its marks cover Kafka but
        the rows stay incomplete for ``settle_s``: the worker considers itself done, and the law will name
        what is missing. A lake whose marks and rows do not move for ``stall_s`` while behind Kafka has
        stalled; ``cap_s`` bounds it all.
        """
        cfg = self.config
        stall_s = self.stall_s
        began = last_change = time.monotonic()
        last_state: Any = None
        marks_cover_since: float | None = None
        last_rows_check = 0.0
        covered: tuple[tuple[TP, int], ...] | None = None  # rows per partition, from the last row scan
        ends: dict[TP, int] | None = None
        marks: dict[TP, int] | None = None
        records: dict[tuple[TP, int], int] = {}  # committed records below an end, counted once per (partition, end)
        while True:
            self.tick()
            now = time.monotonic()
            ends = bounded(self.env.end_offsets, 30.0, None) or ends  # unreachable: as last seen
            marks = bounded(self.env.marks, 30.0, None) or marks
            marks_cover = ends is not None and marks is not None and self._marks_cover(ends, marks)
            if self.judge_rows and ends is not None and (marks_cover or now - last_rows_check > 15.0):
                last_rows_check = now
                counter = bounded(self.env.positions, 120.0, None)
                if counter is not None:
                    present = Counter((t, p) for (t, p, o) in counter if o < ends.get((t, p), 0))
                    covered = tuple(sorted(present.items()))
                    short = {
                        tp: e
                        for tp, e in ends.items()
                        if tp[0] != self.env.topics["reference"] and present.get(tp, 0) < e
                    }
                    if marks_cover and short:  # markers or aborted records below the end hold no row
                        short = {tp: e for tp, e in short.items() if present.get(tp, 0) < self._records(records, tp, e)}
                    if not short:
                        return self.now(), None
            state = (tuple(sorted((ends or {}).items())), tuple(sorted((marks or {}).items())), covered)
            if state != last_state:
                last_state, last_change = state, now
            if marks_cover:
                marks_cover_since = marks_cover_since or now
                if now - marks_cover_since > cfg.settle_s and now - last_change > cfg.settle_s:
                    self.notes.append("the marks cover Kafka but rows are missing (the lake settled incomplete)")
                    return self.now() - (now - marks_cover_since), None  # caught up, as far as K2 knows
            else:
                marks_cover_since = None
            if now - last_change > stall_s:
                behind = {
                    f"{t}/{p}": e - (marks or {}).get((t, p), -1) - 1
                    for (t, p), e in (ends or {}).items()
                    if e - (marks or {}).get((t, p), -1) - 1 > 0
                }
                return None, f"lake stopped moving for {stall_s:.0f}s while behind Kafka by {behind}"
            if marks_cover and not self.judge_rows:
                return self.now(), None
            if now - began > cfg.cap_s:
                return None, f"lake not caught up after {cfg.cap_s:.0f}s (still moving)"
            time.sleep(2.0)

    def _marks_cover(self, ends: Mapping[TP, int], marks: Mapping[TP, int]) -> bool:
        """Whether no committed record waits above the lake's marks (markers and aborted records may)."""
        starts = {tp: marks.get(tp, -1) + 1 for tp, e in ends.items() if marks.get(tp, -1) + 1 < e}
        if not starts:
            return True
        waiting = bounded(lambda: with_records(self.env.bootstrap, starts, ends), 90.0, None)
        return waiting is not None and not waiting

    def _records(self, counted: dict[tuple[TP, int], int], tp: TP, end: int) -> int:
        """How many committed records partition ``tp`` holds below ``end`` (read once; -1 if Kafka did not say)."""
        if (tp, end) not in counted:
            found = bounded(lambda: read_topics(self.env.bootstrap, {tp: end}), 300.0, None)
            if found is None:
                return end
            counted[(tp, end)] = len(found)
        return counted[(tp, end)]

    # The ending --------------------------------------------------------------------------------

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """The end of the ``with`` block is the end of the scenario: conclude it, whatever happened in it.

        A stall inside the block (a bounded wait that ran out) goes straight to the judgement; any other
        error aborts the faults but still gets its report, so every scenario leaves a line of evidence.
        """
        if self._concluded or (exc is not None and not isinstance(exc, Exception)):
            return
        if exc is None:
            self.conclude()
        elif isinstance(exc, Stall):
            self.conclude(stalled=str(exc))
        else:
            self.conclude(extra_failures=[f"scenario aborted: {type(exc).__name__}: {exc}"])

    def conclude(self, extra_failures: Iterable[str] = (), stalled: str | None = None) -> ScenarioReport:
        """Wait for the flow and the lake (bounded), stop the workers, judge the law and the values,
        report, and fail the test if anything is wrong. ``stalled``: the scenario already stalled
        (the judgement is of the lake as it is)."""
        self._concluded = True
        failures = list(extra_failures)
        stall: str | None = stalled
        flow_end: float | None = None
        caught_up: float | None = None
        if stall is None:
            try:
                flow_end = self.wait_replays()
                caught_up, stall = self.wait_caught_up()
            except Stall as exc:
                stall = str(exc)
        if stall:
            failures.append(f"stall: {stall}")
            self.notes += [f"{w.name} (pid {w.pid}) log tail:\n{w.tail(15)}" for w in self.env.workers[-3:]]
        for worker in self.env.live_workers():
            took = worker.terminate(60)
            if took is None:
                self.notes.append(f"{worker.name} ignored SIGTERM for 60s at the end and was SIGKILLed")
        self.tick()
        self._rss.stop()
        for replay in self.env.replays:
            replay.stop()

        ends = self.env.end_offsets()
        failures += self._takeover_failures()
        try:
            # what was committed below the ends: what must land (millions of records when the rows are not judged)
            source = read_topics(self.env.bootstrap, ends) if self.judge_rows else {}
        except Exception as exc:
            source = {}
            failures.append(f"reading the source topics failed: {type(exc).__name__}: {exc}")
        try:
            law = check_law(self.env, source, self.config.law if self.judge_rows else "audit")
            if not law.holds:
                failures.append(
                    f"law broken: missing {law.missing_count} [{format_ranges(law.missing, 6)}], doubled "
                    f"{law.doubled_count} [{format_ranges(law.doubled, 6)}], extra {offset_count(law.extra)}, "
                    f"gap rows doubled {offset_count(law.gap_rows_doubled)}"
                    + (
                        f", values differ {offset_count(law.values_differ)} [{format_ranges(law.values_differ, 6)}]"
                        if law.values_differ
                        else ""
                    )
                )
        except Exception as exc:  # a judgement that cannot be made is a failure, and still reported
            law = LawVerdict(holds=False, source=self.config.law, notes=[f"law check failed: {exc!r}"])
            failures.append(f"law check failed: {type(exc).__name__}: {exc}")
        if not self.expectations:  # the replayed sample numbers every stream without a hole
            try:
                gaps = gap_positions(self.env)
                if gaps:
                    failures.append(
                        f"false sequence gaps: the source has none, the lake reports {len(gaps)} "
                        f"[{format_ranges(position_ranges(gaps), 6)}]"
                    )
            except Exception as exc:
                failures.append(f"gap check failed: {type(exc).__name__}: {exc}")
        try:
            if not self.judge_rows:
                raise _NotCompared
            values = check_values(self.env, source, self.expectations)
            if not values.holds:
                failures.append(
                    f"values: {offset_count(values.mismatched)} rows differ from source, "
                    f"{offset_count(values.good_rejected)} good events rejected {values.good_rejected_reasons}, "
                    f"{offset_count(values.bad_landed)} bad events landed as rows, "
                    f"{offset_count(values.reject_bytes_differ)} rejects with altered bytes"
                )
        except _NotCompared:
            values = ValueVerdict(examples=["values not compared: the flow is too big to read back row by row"])
        except Exception as exc:
            values = ValueVerdict(examples=[f"value check failed: {exc!r}"])
            failures.append(f"value check failed: {type(exc).__name__}: {exc}")
        rows_out, rejects = self._counts()
        took = self._assignment_to_consuming()
        if took:
            took.sort()
            self.notes.append(
                f"assignment to consuming (worker logs, {len(took)} positionings): "
                f"p50 {took[len(took) // 2]:.1f}s, max {took[-1]:.1f}s"
            )
        cleared = [f.cleared_s for f in self.faults if f.cleared_s is not None]
        began = [f.began_s for f in self.faults]
        peaks = {w.name: round(w.peak_rss_kb / 1024, 1) for w in self.env.workers if w.peak_rss_kb}
        report = ScenarioReport(
            scenario=self.name,
            title=self.title,
            version=self.config.version,
            seed=self.config.seed,
            verdict="fail" if failures else "pass",
            failures=failures,
            events_in=len(source),
            rows_out=rows_out,
            rejects=rejects,
            missing_count=law.missing_count,
            doubled_count=law.doubled_count,
            missing_by_label=self._by_label(law.missing),
            doubled_by_label=self._by_label(law.doubled),
            missing=law.missing,
            doubled=law.doubled,
            extra=law.extra,
            stall=stall,
            recovery_s=round(caught_up - max(cleared), 1) if caught_up is not None and cleared else None,
            fault_to_caught_up_s=round(caught_up - min(began), 1) if caught_up is not None and began else None,
            flow_end_to_caught_up_s=round(caught_up - flow_end, 1)
            if caught_up is not None and flow_end is not None
            else None,
            peak_rss_mb=peaks,
            peak_rss_max_mb=max(peaks.values()) if peaks else None,
            faults=[asdict(f) for f in self.faults],
            crashes=self.crashes,
            values=asdict(values),
            law={k: v for k, v in asdict(law).items() if k not in ("missing", "doubled", "extra")},
            notes=self.notes,
            started_at=self._started_at,
            duration_s=round(time.monotonic() - self._t0, 1),
            code=code_under_test(self.env.env),
            takeovers=[t.as_report() for t in self.takeovers],
        )
        append_report(self.config.report_path, report)
        print("\n" + report.line(), flush=True)
        if report.missing_by_label or report.doubled_by_label:
            print(f"  missing by kind: {report.missing_by_label}; doubled by kind: {report.doubled_by_label}")
        for example in values.examples[:5]:
            print(f"  e.g. {example}")
        if failures:  # the report says it all; a traceback through the harness would not add anything
            pytest.fail(report.line() + "\n" + "\n".join(self.notes[-6:]), pytrace=False)
        return report

    def _assignment_to_consuming(self) -> list[float]:
        """Seconds from assignment to consuming, as each worker logged them (one figure per positioning)."""
        found = []
        for worker in self.env.workers:
            with contextlib.suppress(OSError):
                text = worker.log.read_text(errors="replace")
                found += [float(m) for m in re.findall(r"consuming, ([0-9.]+)s after their assignment", text)]
        return found

    def kill_and_measure(self, victim: Worker, survivor: Worker) -> Takeover:
        """SIGKILL ``victim`` as a fault and measure ``survivor``'s takeover (``tests/faults/takeover.py``)."""
        uptime_s = self.now()
        with self.fault(f"SIGKILL {victim.name} after {uptime_s / 60:.1f} min of flow; {survivor.name} takes over"):
            takeover = measure_takeover(self.env, victim, survivor, uptime_s, self.tick)
        self.takeovers.append(takeover)
        print(f"  [{self.name}] takeover {takeover.line()}" + "".join(f"; {n}" for n in takeover.notes), flush=True)
        return takeover

    def _takeover_failures(self) -> list[str]:
        """A restore beyond twice the buffer's bound, or a takeover that could not be measured, fails the scenario."""
        out = []
        for t in self.takeovers:
            if t.bounded is False:
                out.append(
                    f"restore not bounded by the buffer after {t.uptime_s / 60:.1f} min: {t.restored_records:,} "
                    f"changelog records > 2 x {t.buffer_bound:,}"
                )
            if t.bounded is None or t.takeover_s is None:
                out.append(f"takeover after {t.uptime_s / 60:.1f} min not measured: {'; '.join(t.notes) or '?'}")
        return out

    def _counts(self) -> tuple[int, int]:
        """(rows in the market tables, rows in the rejects table); -1 when the lake cannot say."""
        try:
            catalog = self.env.catalog()
            tables = (TRADES, QUOTES, reference_ledger(self.env))
            rows_out = sum(len(scan_rows(catalog, table, ("kafka_offset",))) for table in tables)
            return rows_out, len(scan_rows(catalog, REJECTS, ("source_offset",)))
        except Exception:
            return -1, -1

    def _by_label(self, found: Mapping[str, list[list[int]]]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for tp, runs in found.items():
            topic, _, partition = tp.rpartition("/")
            for first, last in runs:
                for offset in range(first, last + 1):
                    counts[self.labels.get((topic, int(partition), offset), "source event")] += 1
        return dict(counts.most_common())

    def close(self) -> None:
        """Whatever happened: workers and replays stopped, the stack whole again, the topics gone."""
        self._rss.stop()
        self.env.close()
        self.services.heal()
        for dep in (self.env, *self._side):
            with contextlib.suppress(Exception):
                dep.delete_topics()


ScenarioFactory = Callable[..., Scenario]
