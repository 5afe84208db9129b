"""The topic configs of K2's changelog topics: what a new owner of a partition restores stays near what is live.

A worker that takes over partitions (after a crash, a deploy, any rebalance: faust's memory
store restores every partition it is assigned, its own included) reads each changelog
partition from its start to its end. Compaction is what keeps that short, and Kafka's
defaults barely compact: the active segment is never cleaned and rolls only after 7 days or
1 GiB, so everything written since the topic was created stays readable, and what a successor
reads grows with the group's uptime (390,679 records after ten minutes at 2,000 events/s).

The buffer tables write each chunk once and tombstone it after it lands; the sequence tables
rewrite a head and a window block per (exchange, symbol) on every batch and delete blocks
that leave the window. What is live is small (the buffered chunks, a few dozen keys per
symbol); the rest is superseded. With these settings a restore reads the live keys, the
tombstones of the last :data:`TOMBSTONE_RETENTION_MS`, and what was written since the last
roll and clean: about ``write rate x (SEGMENT_MS + the broker's log.cleaner.backoff.ms)``.

:func:`changelog_topic_configs` is the one place they are set: faust creates the changelogs
with them (the tables' ``extra_topic_configs``), and ``k2 init`` creates or re-configures the
changelog topics of the configured app id with them (:func:`k2.admin.topics.align_topic_configs`).
"""

from __future__ import annotations

from k2.settings import Settings

__all__ = [
    "MAX_COMPACTION_LAG_MS",
    "MIN_CLEANABLE_DIRTY_RATIO",
    "SEGMENT_MS",
    "TOMBSTONE_RETENTION_MS",
    "changelog_topic_configs",
]

SEGMENT_MS = 10_000
"""Roll the active segment after 10 s: only a rolled segment can be compacted, so this bounds the
uncleaned tail a restore reads to about 10 s of writes (at full rate a few thousand records)."""

MAX_COMPACTION_LAG_MS = SEGMENT_MS
"""A rolled segment is cleaned at the cleaner's next pass whatever the dirty ratio (for compacted
topics this also caps the time-based roll): a worker idling on a large buffer, whose new writes are
a small share of the log, is still compacted on time."""

MIN_CLEANABLE_DIRTY_RATIO = "0.1"
"""Clean once a tenth of the log is superseded (Kafka's default waits for half)."""

TOMBSTONE_RETENTION_MS = 30_000
"""``delete.retention.ms``: how long a tombstone stays readable after the cleaner first saw it.

Most of what a compacted changelog holds is tombstones: one per landed chunk, one per window block
that left its window (at full rate hundreds a second). Kafka's default keeps each for a day, and a
restore reads them all; 30 s keeps a few thousand. A tombstone must outlive any restore that read
the value it deletes before the cleaner removed that value, so this must exceed the longest
restore: they took 5-16 s on a loaded 2-core machine (README, Takeover). A restore slower than
this can keep a deleted value: a chunk that already landed (flushed again, its rows dropped by the
lake's offset marks) or a window block that had left its window (held in memory, never consulted
again): never a wrong row, at worst a stale key.
"""


def changelog_topic_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of every changelog topic K2's tables use (buffer, sequence and reference tables)."""
    return {
        "cleanup.policy": "compact",
        # A chunk is one record: the changelog must take what a batch of the largest source records makes.
        "max.message.bytes": str(settings.max_message_bytes),
        "segment.ms": str(SEGMENT_MS),
        "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS),
        "min.cleanable.dirty.ratio": MIN_CLEANABLE_DIRTY_RATIO,
        "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
    }
