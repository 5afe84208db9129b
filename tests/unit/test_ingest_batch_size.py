"""Which path a batch takes: the batch path from MIN_PROVED_BATCH records, record by record below; the same rows."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from k2.app import sources
from k2.avro.codec import encode
from k2.avro.schemas import CONTRACTS
from k2.ingest.fast import MIN_PROVED_BATCH, DecoderCache
from k2.ingest.frames import Frames, RawRecord
from k2.ingest.processor import Prepared, classify_batch
from k2.lake.arrow import arrow_schema
from k2.settings import Settings
from tests.unit.fuzz_frames import KNOWN_ID, NOW, TARGETS, resolutions, valid_record


@pytest.mark.parametrize("contract", ["trade", "quote"])
def test_a_live_sized_batch_goes_record_by_record_and_a_backlogs_takes_the_batch_path(contract: str) -> None:
    """Issue 19: the batch path's fixed cost is more than the per-record path spends on a batch of tens of
    records (3.5 times as long at 32 trades, `bench/classify_bench.py`), and a live rate fetches such batches."""
    target = TARGETS[contract]
    source = next(s for s in sources(Settings()) if s.topic == target.topic)
    rng = random.Random(7)
    parsed = CONTRACTS[contract].parsed
    records = [
        RawRecord(0, offset, b"k", encode(KNOWN_ID, parsed, valid_record(contract, rng)), NOW)
        for offset in range(MIN_PROVED_BATCH)
    ]
    prepared = Prepared(resolutions(contract, records), arrow_schema(target.table))
    for size in (MIN_PROVED_BATCH - 1, MIN_PROVED_BATCH):
        frames = Frames.from_records(records[:size])
        taken = classify_batch(source, frames, prepared, DecoderCache(), NOW, "test")
        one_by_one = classify_batch(replace(source, row_rules=None), frames, prepared, DecoderCache(), NOW, "test")
        # The batch path proves what its rules are sure of (these records roam the whole range of each
        # field) and leaves the rest to the per-record path: some, not all, of a batch at the threshold.
        assert (taken.proved > 0) == (size >= MIN_PROVED_BATCH)
        assert taken.accepted == one_by_one.accepted == size
        assert taken.rows is not None and one_by_one.rows is not None and taken.rows.equals(one_by_one.rows)
