"""``k2 audit --values``: the options of the value audit, and running it beside the law."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyiceberg.catalog import Catalog

from k2.audit.values_report import ValuesReport
from k2.audit.values_sample import BLOCK
from k2.settings import Settings


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction of the blocks, above 0 and at most 1: {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "values",
        "--values also compares every row with its source record in Kafka (read_committed), decoded with its "
        "writer schema: every column, evolved ones included, decimals exactly, instants in UTC; rejects' key, "
        "value and headers byte for byte. Mismatches are listed as offset ranges with the column and both values.",
    )
    group.add_argument("--values", action="store_true", help="compare every row's values with its source record")
    group.add_argument(
        "--sample",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help=f"(implies --values) check this fraction of each partition's blocks of {BLOCK:,} offsets (at least one)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="with --sample: which blocks (the same seed, the same blocks)"
    )
    group.add_argument(
        "--spill-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --values: where the lake's rows are spilled while compared (default: the temporary folder)",
    )


def run(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> ValuesReport | None:
    """The value audit when ``--values`` was given (None otherwise)."""
    if not args.values and args.sample is None:  # --sample implies --values
        return None
    from k2.audit.values import audit_values

    return audit_values(
        settings, catalog, sample=args.sample, seed=args.seed, timeout_s=args.timeout, spill_dir=args.spill_dir
    )
