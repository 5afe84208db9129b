#!/usr/bin/env python3
"""Coverage-guided fuzzing of classify -> Arrow with atheris (libFuzzer): a separate, long run.

The hypothesis property (``tests/unit/test_fuzz.py``) mutates frames blindly but in bulk;
this harness lets libFuzzer steer by coverage of K2's Python code (fastavro is compiled,
so its branches are not seen). Each input is one batch: its first byte picks the contract
(and whether to frame the rest with the contract's schema id), the rest is split on a
separator into record values. Every batch must pass
:func:`tests.unit.fuzz_frames.check_batch`. Seeded with valid and poisoned frames from
:mod:`tests.unit.fuzz_frames` when the corpus folder is empty.

    PYTHONPATH=. .venv/bin/python tests/fuzz/atheris_classify.py var/fuzz-corpus -max_total_time=3600
"""

from __future__ import annotations

import os
import random
import sys

import atheris

with atheris.instrument_imports(include=["k2"]):
    from k2.ingest.frames import RawRecord
    from tests.unit.fuzz_frames import KNOWN_ID, NOW, TARGETS, base_frame, check_batch

_CONTRACTS = sorted(TARGETS)
_SEPARATOR = b"\xfe\xed\xfa\xce"


def one_input(data: bytes) -> None:
    """libFuzzer's entry point: one input, one batch; an AssertionError is a finding."""
    if not data:
        return
    contract = _CONTRACTS[data[0] % len(_CONTRACTS)]
    header = b"\x00" + KNOWN_ID.to_bytes(4, "big") if data[0] & 0x80 else b""
    values = [header + part for part in data[1:].split(_SEPARATOR)]
    check_batch(TARGETS[contract], [RawRecord(0, i, None, v, NOW) for i, v in enumerate(values)])


def seed_corpus(folder: str, count: int = 64) -> None:
    """Valid and poisoned frames of each contract, so the fuzzer starts from real structure."""
    os.makedirs(folder, exist_ok=True)
    if os.listdir(folder):
        return
    rng = random.Random(0)
    for i in range(count):
        index = i % len(_CONTRACTS)
        frame = base_frame(_CONTRACTS[index], rng, poison=(i % 4) / 3)
        with open(os.path.join(folder, f"seed-{i:03d}"), "wb") as f:
            f.write(bytes([0x80 | index]) + frame[5:])


if __name__ == "__main__":
    corpus = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        seed_corpus(corpus)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
