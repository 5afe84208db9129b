"""Source topics that grow: their co-partitioned changelog topics grow with them.

A source partition's buffer chunks and sequence state live in changelog partitions of the
same number (co-partitioning: whoever owns ``trades/7`` owns ``buffer-trades-changelog/7``).
faust's assignor hands out a source topic and its changelogs together only while they have
as many partitions; when an operator adds partitions to a source topic, the new ones (and,
in the assignor's grouping, the old ones too) are assigned without their changelog
partitions, and K2 keeps such partitions positioning until they come together
(:mod:`k2.pipeline.positioning`).

:class:`ChangelogGrowth` closes the gap: each worker, on a timer, and ``k2 init`` compare the
partition counts and add partitions to any changelog topic that has fewer than its source
(Kafka's CreatePartitions: K2's principal needs Alter on its own changelog topics). The
consumer's next metadata refresh sees the new partitions and the group rebalances with the
topics together again. Partitions are never removed (Kafka cannot), and a changelog with
more partitions than its source is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.settings import Settings

__all__ = ["ChangelogGrowth", "changelogs_to_grow"]

log = logging.getLogger(__name__)


def changelogs_to_grow(partitions: Mapping[str, int], table_topics: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Changelog topics with fewer partitions than their source topic, and the count they need. Pure.

    ``partitions``: the partition count of every topic that exists; a source or a changelog
    missing from it is skipped (``k2 init`` or faust creates it, with the right count).
    """
    out: dict[str, int] = {}
    for source, changelogs in table_topics.items():
        want = partitions.get(source)
        if want is None:
            continue
        for changelog in changelogs:
            have = partitions.get(changelog)
            if have is not None and have < want:
                out[changelog] = max(want, out.get(changelog, 0))
    return out


class ChangelogGrowth:
    """Grows the changelog topics of a deployment to their source topics' partition counts (blocking I/O)."""

    def __init__(self, settings: Settings, table_topics: Mapping[str, Sequence[str]], timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.table_topics = {source: tuple(names) for source, names in table_topics.items()}
        self.timeout_s = timeout_s
        self._errors = ConnectErrors()
        self._admin: AdminClient | None = None

    def check(self) -> dict[str, int]:
        """Grow what needs it; returns the changelog topics grown, with their new counts.

        Raises:
            ServiceUnavailable: Kafka does not answer within the timeout.
            KafkaException: Kafka refused the growth (e.g. the principal may not alter the topic).
        """
        if self._admin is None:
            self._admin = AdminClient(client_conf(self.settings, errors=self._errors))
        admin = self._admin
        metadata = cluster_metadata(admin, self.settings, self._errors, self.timeout_s)
        counts = {name: len(meta.partitions) for name, meta in metadata.topics.items() if meta.error is None}
        grow = changelogs_to_grow(counts, self.table_topics)
        if not grow:
            return {}
        futures = admin.create_partitions(
            [NewPartitions(name, count) for name, count in sorted(grow.items())],
            operation_timeout=self.timeout_s,
            request_timeout=self.timeout_s,
        )
        grown: dict[str, int] = {}
        for name, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if error is not None and error.name() == "INVALID_PARTITIONS":
                    continue  # another worker grew it first
                raise
            grown[name] = grow[name]
            log.warning(
                "%s grown from %d to %d partitions to match its source topic (partitions were added to it): "
                "the group rebalances when its metadata is next refreshed",
                name,
                counts[name],
                grow[name],
            )
        return grown
