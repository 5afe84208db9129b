"""``k2 replay``: send recorded ASX files to Kafka as a live-looking feed."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from k2.avro.registry import registry_client
from k2.errors import K2Error, ReplayInputError
from k2.replay.asx_csv import Trade
from k2.replay.feed import Faults, Injected, plan_faults
from k2.replay.producer import (
    KAFKA_LOG,
    Replayer,
    ReplayReport,
    ReplaySource,
    check_kafka,
    check_registered,
    load_source,
    make_producer,
    make_serializers,
)
from k2.settings import Settings, get_settings

__all__ = ["KAFKA_CHECK_TIMEOUT_S", "add_parser", "format_report", "injected_payload", "run"]

#: How long to wait for Kafka metadata before declaring the cluster unreachable.
KAFKA_CHECK_TIMEOUT_S = 10.0

_DESCRIPTION = """\
Replay a folder of ASX tick files into Kafka, as Avro records framed for the schema registry.

DIR must hold trades/<company_id>.csv and quotes/<company_id>.csv (no header, CRLF,
Australia/Sydney local times) and reference-data/company_info.csv (with a header).
Reference data is sent once (key: company_id); then trades and quotes of all symbols are
merged by exchange time (key: symbol) and sent to the topics of K2_TRADES_TOPIC and
K2_QUOTES_TOPIC. Each event gets a per-symbol sequence number and the current time as
ingestion_timestamp. Run `k2 init` first: the replay writes only registered schemas.

--inject-gaps N drops N events and --inject-duplicates N sends N events twice (the second
time a little later, with a new ingestion_timestamp), at random positions that --seed
makes reproducible: each dropped event is one gap of one number that K2 must report, each
repeated one a duplicate it must reject. --injected-report FILE writes what was injected
as JSON.

Malformed lines are reported (file:line: reason) and not sent. The exit code is 0 when
every record was delivered, 1 when some were not, 2 for bad input or unreachable services.
"""

_EPILOG = """\
examples:
  k2 replay data/sample
  k2 replay /work/shared/data/asx-2014-03 --symbols BHP --rate 5000
  k2 replay data/sample --loop 3 --no-progress
  k2 replay data/sample --inject-gaps 5 --inject-duplicates 5 --seed 7 --injected-report injected.json
"""


def _positive_rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of events per second")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _symbols(text: str) -> list[str]:
    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError("expected a comma-separated list of symbols, e.g. BHP,DVN")
    return symbols


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``k2 replay`` on the ``k2`` command's subparsers."""
    parser = subparsers.add_parser(
        "replay",
        help="replay ASX CSV files into Kafka as a live-looking feed",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder with trades/, quotes/ and reference-data/")
    parser.add_argument(
        "--rate", type=_positive_rate, default=None, metavar="N", help="at most N events per second (default: no limit)"
    )
    parser.add_argument(
        "--loop",
        type=_positive_int,
        default=1,
        metavar="K",
        help="send the events K times; each pass is shifted past the previous one in time "
        "(by the data's span + 1 ms) and continues the sequence numbers (default: 1)",
    )
    parser.add_argument(
        "--loop-step",
        type=_positive_int,
        default=None,
        metavar="MS",
        help="shift pass i by i*MS ms instead, so that passes stay on the data's own days "
        "(a long load without a day partition per pass; sequence numbers still continue)",
    )
    parser.add_argument(
        "--symbols",
        type=_symbols,
        default=None,
        metavar="SYM[,SYM...]",
        help="only these symbols, e.g. BHP,DVN (default: all in the reference data)",
    )
    parser.add_argument(
        "--instruments",
        type=_positive_int,
        default=1,
        metavar="N",
        help="send each company as N instruments: itself and copies SYM.1 ... SYM.N-1 with their own company ids "
        "and sequence numbers, so a load spreads over the topics' partitions (default: 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway without a tty)")
    parser.add_argument(
        "--inject-gaps", type=_count, default=0, metavar="N", help="drop N events: N sequence gaps (default: 0)"
    )
    parser.add_argument(
        "--inject-duplicates", type=_count, default=0, metavar="N", help="send N events twice (default: 0)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the injected positions (default: 0)")
    parser.add_argument(
        "--injected-report", type=Path, default=None, metavar="FILE", help="write what was injected to FILE as JSON"
    )
    parser.set_defaults(func=run)


def format_report(report: ReplayReport, settings: Settings) -> str:
    """The end-of-replay summary: records per topic, failures, malformed lines, time and rate."""
    lines: list[str] = []
    for topic in (settings.reference_topic, settings.trades_topic, settings.quotes_topic):
        failed = report.failed.get(topic, 0)
        extra = f", {failed} FAILED" if failed else ""
        lines.append(f"{topic}: {report.delivered.get(topic, 0)} delivered{extra}")
    if report.failed.get("(not flushed)"):
        lines.append(f"not flushed: {report.failed['(not flushed)']}")
    lines.extend(f"delivery error: {error}" for error in report.errors)
    if report.injected:
        lines.extend(_injected_lines(report.injected, settings))
    lines.append(f"malformed lines: {len(report.malformed)}")
    lines.extend(f"  {line}" for line in report.malformed)
    lines.append(
        f"{report.total_delivered} records in {report.elapsed_s:.2f} s ({report.rate:,.0f} records/s), "
        f"{report.total_failed} failed"
    )
    return "\n".join(lines)


_SHOW_INJECTED = 20


def _topic(kind: type, settings: Settings) -> str:
    return settings.trades_topic if kind is Trade else settings.quotes_topic


def _injected_lines(injected: list[Injected], settings: Settings) -> list[str]:
    gaps = sum(1 for i in injected if i.fault == "gap")
    lines = [f"injected: {gaps} gap(s), {len(injected) - gaps} duplicate(s)"]
    for i in injected[:_SHOW_INJECTED]:
        lines.append(f"  {i.fault} {_topic(i.kind, settings)} {i.symbol} #{i.sequence_number}")
    if len(injected) > _SHOW_INJECTED:
        lines.append(f"  ... {len(injected) - _SHOW_INJECTED} more (--injected-report FILE lists them all)")
    return lines


def injected_payload(injected: list[Injected], settings: Settings, seed: int) -> dict[str, Any]:
    """What ``--injected-report`` writes: the gaps K2 must report and the duplicates it must reject."""
    return {
        "seed": seed,
        "gaps": [
            {
                "topic": _topic(i.kind, settings),
                "symbol": i.symbol,
                "expected": i.sequence_number,
                "received": i.sequence_number + 1,
                "missing": 1,
            }
            for i in injected
            if i.fault == "gap"
        ],
        "duplicates": [
            {"topic": _topic(i.kind, settings), "symbol": i.symbol, "sequence_number": i.sequence_number}
            for i in injected
            if i.fault == "duplicate"
        ],
    }


def _faults(args: argparse.Namespace, source: ReplaySource) -> Faults | None:
    if not (args.inject_gaps or args.inject_duplicates):
        return None
    streams = [(type(e), e.symbol) for e in source.events]
    try:
        return plan_faults(streams, args.loop, args.inject_gaps, args.inject_duplicates, args.seed)
    except ValueError as exc:
        raise ReplayInputError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    """Replay ``args.dir``; 0 if all delivered, 1 if some deliveries failed, 2 on bad input or no service."""
    settings = get_settings()
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        KAFKA_LOG.setLevel(logging.CRITICAL)  # connection-refused spam; failures are reported by us
    try:
        source = load_source(args.dir, args.symbols, args.instruments)
        faults = _faults(args, source)
        check_kafka(settings, timeout_s=KAFKA_CHECK_TIMEOUT_S)
        producer = make_producer(settings)
        client = registry_client(settings)
        check_registered(client, settings)
        replayer = Replayer(producer, make_serializers(client), settings)
        progress = not args.no_progress and sys.stderr.isatty()
        report = replayer.run(
            source, loops=args.loop, loop_step_ms=args.loop_step, rate=args.rate, progress=progress, faults=faults
        )
    except K2Error as exc:
        print(f"k2 replay: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, settings))
    if args.injected_report is not None:
        payload = injected_payload(report.injected, settings, args.seed)
        args.injected_report.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if report.total_failed else 0
