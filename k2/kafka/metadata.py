"""What the worker's producer knows of a topic's partitions, refreshed on demand.

aiokafka's producer refuses a record for a partition its metadata does not list ("Unrecognized
partition") and refreshes that metadata only every ``producer_metadata_max_age_ms``. After a
changelog topic grew (:mod:`k2.admin.growth`), a partition's first write must wait until the
producer knows the new partitions, or it would fail and stop the partition: positioning asks
here first, refreshing the producer's metadata when a partition is missing.

Asking also makes the producer follow the topic. aiokafka refreshes the metadata of the
topics its client follows, every ``metadata_max_age_ms``; while it follows none it asks for
*every* topic of the cluster, and a topic found in that answer is never followed, so it
goes on asking for all of them. Decoding that answer is pure Python on the event loop: 0.04
to 0.07 s for a broker of 964 topics here, and 0.6 s in one stretch seen in a worker whose
commit threads held the GIL (issue 19). Following K2's changelogs keeps every refresh to
them; a topic written to that is not followed (rejects) is added by aiokafka at its first
send, as it is when the metadata does not know it.

Private names used (pinned by ``tests/unit/test_growth.py``): faust's
``Producer._ensure_producer`` (the aiokafka producer it wraps; its ``client`` and the client's
``cluster``, ``add_topic`` and ``force_metadata_update`` are aiokafka's public attributes).
"""

from __future__ import annotations

from typing import Any

__all__ = ["producer_partitions"]


async def producer_partitions(producer: Any, topic: str, *, refresh: bool = False) -> set[int]:
    """The partitions of ``topic`` the producer can write to (refreshing its metadata first if asked)."""
    client = producer._ensure_producer().client
    client.add_topic(topic)  # follow it (see the module docstring); no request when it is followed already
    if refresh:
        await client.force_metadata_update()
    return set(client.cluster.partitions_for_topic(topic) or ())
