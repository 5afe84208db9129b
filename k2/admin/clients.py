"""Configuration shared by every confluent-kafka (librdkafka) client the ``k2`` commands build.

librdkafka logs each failed connection attempt to stderr, a dozen lines a second: against
an unreachable broker ``k2 init`` printed some 190 of them before its own one-line message.
Its log goes to :data:`LIBRDKAFKA_LOG` instead, which the CLI silences unless ``-v``; K2
reports the failure itself, once, saying what to do.
"""

from __future__ import annotations

import logging
from typing import Any

from k2.settings import Settings

__all__ = ["LIBRDKAFKA_LOG", "client_conf"]

LIBRDKAFKA_LOG = logging.getLogger("k2.librdkafka")


def client_conf(settings: Settings, **extra: Any) -> dict[str, Any]:
    """``bootstrap.servers`` and the quiet logger, plus ``extra`` (librdkafka property names)."""
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "logger": LIBRDKAFKA_LOG, **extra}
