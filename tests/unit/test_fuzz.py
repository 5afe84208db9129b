"""Fuzzing the per-record path: every Kafka record lands or is rejected with a reason, never a crash.

Each hypothesis example is a contract, a seed and mutation parameters that expand into
:data:`PER_EXAMPLE` mutated frames (see :mod:`tests.unit.fuzz_frames`), checked as one
batch by :func:`~tests.unit.fuzz_frames.check_batch`. The default run covers about
:data:`FRAMES` = one million frames; ``K2_FUZZ_FRAMES=10000000`` makes a long run. A
failure names the one frame that breaks the law (its bytes in hex) and hypothesis prints
the example that reproduces the batch.

    K2_FUZZ_FRAMES=10000000 .venv/bin/pytest tests/unit/test_fuzz.py -s
"""

from __future__ import annotations

import math
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2.avro.codec import encode
from k2.avro.schemas import CONTRACTS
from k2.ingest.frames import RawRecord
from tests.unit.avro_wire import encode_wide
from tests.unit.fuzz_frames import KNOWN_ID, NOW, REASONS, TARGETS, Tally, check_batch, frames, valid_record

FRAMES = int(os.environ.get("K2_FUZZ_FRAMES", "1000000"))
PER_EXAMPLE = 2000
EXAMPLES = max(1, math.ceil(FRAMES / PER_EXAMPLE))

TALLY = Tally()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree or in CI
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    contract=st.sampled_from(sorted(TARGETS)),
    seed=st.integers(0, 2**64 - 1),
    max_mutations=st.integers(1, 8),
    poison=st.floats(0.0, 1.0),
    mutated=st.sampled_from((0.875, 0.1, 0.01)),
)
def test_mutated_frames_land_or_are_rejected_never_crash(
    contract: str, seed: int, max_mutations: int, poison: float, mutated: float
) -> None:
    check_batch(TARGETS[contract], frames(contract, seed, PER_EXAMPLE, max_mutations, poison, mutated), TALLY)


def test_fuzz_report() -> None:
    """Runs after the property (file order): the run's size and outcome mix, shown with ``-s``."""
    assert TALLY.frames > 0, "the fuzz property did not run: run the whole file, the property fills the tally"
    reasons = TALLY.reasons or {}
    print(
        f"\nfuzz: {TALLY.frames:,} frames, {TALLY.accepted:,} accepted ({TALLY.proved:,} by the batch path), rejects "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))
    )
    assert TALLY.frames >= min(FRAMES, EXAMPLES * PER_EXAMPLE)
    assert TALLY.accepted > 0  # the mutator leaves some frames valid: both sides of the law are exercised
    assert TALLY.proved > 0  # and the batch path proves some of them itself (both paths are compared)
    if TALLY.frames >= 100_000:
        assert set(reasons) == REASONS  # and reaches every reason


def test_fuzz_throughput_fixed_seed() -> None:
    """A fixed-seed slice of the fuzz (reproducible in CI), timed: frames per second of CPU."""
    start = time.process_time()
    count = 0
    for i, contract in enumerate(sorted(TARGETS) * 4):
        batch = frames(contract, 20140310 + i, PER_EXAMPLE, 1 + i % 8, (i % 5) / 4)
        check_batch(TARGETS[contract], batch)
        count += len(batch)
    elapsed = time.process_time() - start
    print(f"\nfuzz: {count:,} frames in {elapsed:.2f} s of CPU, {count / elapsed:,.0f} frames/s")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("contract", sorted(TARGETS))
def test_ten_megabyte_and_empty_frames(contract: str) -> None:
    """The size extremes: 0 bytes, a tombstone, and 10 MB frames of every shape."""
    rng = random.Random(7)
    record = valid_record(contract, rng)
    good = encode(KNOWN_ID, CONTRACTS[contract].parsed, record)
    big = 10 * 2**20
    text_field = "symbol" if contract != "reference_data" else "company_name"
    values: list[bytes | None] = [
        None,
        b"",
        good[:5],
        good + bytes(big),  # trailing bytes
        bytes(big),  # magic 0, id 0, zeros
        good[:5] + rng.randbytes(big),
        encode_wide(KNOWN_ID, contract, {**record, text_field: b"B" * big}),  # a 10 MB string
        encode_wide(KNOWN_ID, contract, {**record, text_field: b"\xff" * big}),  # 10 MB of invalid UTF-8
    ]
    if contract != "reference_data":
        price = "price" if contract == "trade" else "bid_price"
        values.append(encode_wide(KNOWN_ID, contract, {**record, price: b"\x7f" + bytes(big)}))  # a 10 MB decimal
        values.append(encode_wide(KNOWN_ID, contract, {**record, price: b"\x00" * big + b"\x01"}))  # 10 MB, = 1e-6
    batch = [RawRecord(0, i, b"k" * (i * 1000), v, NOW) for i, v in enumerate(values)]
    tally = Tally()
    check_batch(TARGETS[contract], batch, tally)
    assert tally.frames == len(values)
    # Accepted: the 10 MB price that is 0.000001 (non-minimal bytes), or the 10 MB company name
    # (a 10 MB symbol is longer than MAX_SYMBOL_LENGTH).
    assert tally.accepted == 1
