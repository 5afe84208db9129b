"""The ``k2`` command: set K2 up (``k2 init``), feed it (``k2 replay``), look (``k2 tables``), prove (``k2 audit``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from k2 import __version__
from k2.admin.clients import LIBRDKAFKA_LOG
from k2.cli import audit as audit_cmd
from k2.cli import init as init_cmd
from k2.cli import maintain as maintain_cmd
from k2.cli import query as query_cmd
from k2.cli import rejects as rejects_cmd
from k2.cli import replay as replay_cmd
from k2.cli import status as status_cmd
from k2.cli import tables as tables_cmd
from k2.errors import K2Error, describe, is_unavailable
from k2.secrets import Redactor, install_log_redaction, redactor_for
from k2.settings import get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k2",
        description=(
            "K2 lands exchange market data from Kafka into Iceberg tables. "
            "The stream worker itself runs as `faust -A k2.app worker`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"k2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    init_cmd.add_parser(sub)
    replay_cmd.add_parser(sub)
    tables_cmd.add_parser(sub)
    audit_cmd.add_parser(sub)
    status_cmd.add_parser(sub)
    maintain_cmd.add_parser(sub)
    query_cmd.add_parser(sub)
    rejects_cmd.add_parser(sub)
    return parser


# What a shell reports for a writer whose reader went away (`k2 tables | head`): 128 + SIGPIPE.
READER_GONE = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``k2`` console script; returns the process exit code."""
    try:
        try:
            code = _run(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a short output fails only here, when its reader left before it was written
    except BrokenPipeError:
        return _reader_gone()
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # librdkafka's own retry chatter: K2 reports a broker it cannot reach itself, once.
    LIBRDKAFKA_LOG.setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    redact = _redactor()
    install_log_redaction(redact)
    try:
        code: int = args.func(args)
    except K2Error as exc:
        print(redact(f"k2 {args.command}: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"k2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly, as Unix tools do
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        print(
            redact(
                f"k2 {args.command}: a service K2 needs did not answer ({describe(exc)}); check that it is up "
                "(`make stack-status`) and run the command again"
            ),
            file=sys.stderr,
        )
        return 2
    return code


def _reader_gone() -> int:
    """End quietly, as Unix tools do when their reader left (Python's docs, "Note on SIGPIPE").

    Standard output and error go to /dev/null, so what is still buffered cannot fail again
    when the interpreter exits. SIGPIPE itself stays ignored (Python's default): with its
    default action a reset Kafka or S3 connection would kill a command instead of raising.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    return READER_GONE


def _redactor() -> Redactor:
    """The secrets of the settings and the catalog configuration (URL passwords only, if the settings are bad)."""
    try:
        return redactor_for(get_settings())
    except K2Error:
        return Redactor()


if __name__ == "__main__":
    sys.exit(main())
