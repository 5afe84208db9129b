"""``k2 replay``: send recorded ASX files to Kafka as a live-looking feed."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from k2.avro.registry import registry_client
from k2.errors import K2Error
from k2.replay.producer import (
    KAFKA_LOG,
    Replayer,
    ReplayReport,
    check_kafka,
    check_registered,
    load_source,
    make_producer,
    make_serializers,
)
from k2.settings import Settings, get_settings

__all__ = ["KAFKA_CHECK_TIMEOUT_S", "add_parser", "format_report", "run"]

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

Malformed lines are reported (file:line: reason) and not sent. The exit code is 0 when
every record was delivered, 1 when some were not, 2 for bad input or unreachable services.
"""

_EPILOG = """\
examples:
  k2 replay data/sample
  k2 replay /work/shared/data/asx-2014-03 --symbols BHP --rate 5000
  k2 replay data/sample --loop 3 --no-progress
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
        "--symbols",
        type=_symbols,
        default=None,
        metavar="SYM[,SYM...]",
        help="only these symbols, e.g. BHP,DVN (default: all in the reference data)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway without a tty)")
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
    lines.append(f"malformed lines: {len(report.malformed)}")
    lines.extend(f"  {line}" for line in report.malformed)
    lines.append(
        f"{report.total_delivered} records in {report.elapsed_s:.2f} s ({report.rate:,.0f} records/s), "
        f"{report.total_failed} failed"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Replay ``args.dir``; 0 if all delivered, 1 if some deliveries failed, 2 on bad input or no service."""
    settings = get_settings()
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        KAFKA_LOG.setLevel(logging.CRITICAL)  # connection-refused spam; failures are reported by us
    try:
        source = load_source(args.dir, args.symbols)
        producer = make_producer(settings)
        check_kafka(producer, settings, timeout_s=KAFKA_CHECK_TIMEOUT_S)
        client = registry_client(settings)
        check_registered(client, settings)
        replayer = Replayer(producer, make_serializers(client), settings)
        progress = not args.no_progress and sys.stderr.isatty()
        report = replayer.run(source, loops=args.loop, rate=args.rate, progress=progress)
    except K2Error as exc:
        print(f"k2 replay: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, settings))
    return 1 if report.total_failed else 0
