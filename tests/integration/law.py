"""The law every end-to-end test checks, shared by the integration tests.

Every offset consumed from the three source topics lands exactly once in exactly one of
``market_data.trades``, ``market_data.quotes``, ``reference_data.companies`` or
``market_data.rejects``; and every gap row of ``market_data.sequence_gaps`` (keyed by the
position of the event that revealed it) lands at most once.
"""

from __future__ import annotations

from collections import Counter

from k2.admin.watermarks import end_offsets
from k2.lake.schemas import SEQUENCE_GAPS
from tests.integration.k2env import K2Env

__all__ = ["assert_law", "positions"]


def positions(env: K2Env, table: str) -> list[tuple[str, int, int]]:
    """``(source_topic, source_partition, source_offset)`` of every row of a table fed by several topics."""
    data = (
        env.catalog()
        .load_table(table)
        .scan(selected_fields=("source_topic", "source_partition", "source_offset"))
        .to_arrow()
    )
    return list(
        zip(
            data["source_topic"].to_pylist(),
            data["source_partition"].to_pylist(),
            data["source_offset"].to_pylist(),
            strict=True,
        )
    )


def assert_law(env: K2Env) -> None:
    """Every source offset in exactly one table, once; no gap row twice."""
    catalog = env.catalog()
    seen: Counter[tuple[str, int, int]] = Counter()
    topics = {
        "market_data.trades": env.settings.trades_topic,
        "market_data.quotes": env.settings.quotes_topic,
        "reference_data.companies": env.settings.reference_topic,
    }
    for table, topic in topics.items():
        data = catalog.load_table(table).scan(selected_fields=("kafka_partition", "kafka_offset")).to_arrow()
        for p, o in zip(data["kafka_partition"].to_pylist(), data["kafka_offset"].to_pylist(), strict=True):
            seen[(topic, p, o)] += 1
    seen.update(positions(env, "market_data.rejects"))
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"landed more than once: {sorted(twice)[:10]}"
    want = {
        (t, p, o) for (t, p), end in end_offsets(env.settings, env.settings.source_topics).items() for o in range(end)
    }
    # Companies are upserted: superseded versions of a company leave the table by design.
    missing = {k for k in want - set(seen) if k[0] != env.settings.reference_topic}
    assert not missing, f"never landed: {sorted(missing)[:10]}"
    gaps = Counter(positions(env, SEQUENCE_GAPS))
    doubled = {k: n for k, n in gaps.items() if n > 1}
    assert not doubled, f"gap rows landed more than once: {sorted(doubled)[:10]}"
