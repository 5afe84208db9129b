"""Configuration shared by every confluent-kafka (librdkafka) client the ``k2`` commands build.

librdkafka logs each failed connection attempt to stderr, a dozen lines a second: against
an unreachable broker ``k2 init`` printed some 190 of them before its own one-line message.
Its log goes to :data:`LIBRDKAFKA_LOG` instead, which the CLI silences unless ``-v``; K2
reports the failure itself, once, saying what to do: :class:`ConnectErrors` keeps what
librdkafka said, so a refused password or an unverifiable certificate is named as such
rather than reported as a broker that is down.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException

from k2.errors import ServiceUnavailable
from k2.kafka.security import security_conf
from k2.settings import Settings

__all__ = ["LIBRDKAFKA_LOG", "ConnectErrors", "client_conf", "cluster_metadata", "log_reader"]

LIBRDKAFKA_LOG = logging.getLogger("k2.librdkafka")

_REFUSALS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})


class _Client(Protocol):
    def poll(self, timeout: float) -> Any: ...

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


class ConnectErrors:
    """librdkafka's ``error_cb``: the last errors a client reported, to say in words why it failed."""

    def __init__(self) -> None:
        self.seen: deque[KafkaError] = deque(maxlen=20)

    def __call__(self, err: KafkaError) -> None:
        self.seen.append(err)

    def unavailable(self, settings: Settings, client: _Client | None = None) -> ServiceUnavailable:
        """The error to raise after ``client`` failed to reach the cluster (its callbacks are served first)."""
        if client is not None:
            client.poll(0)
        return ServiceUnavailable(self.explain(settings.kafka_bootstrap_servers))

    def refusal(self) -> KafkaError | None:
        """The last authentication or TLS error, if any: the cluster answered, but would not talk to K2."""
        return next((err for err in reversed(self.seen) if err.code() in _REFUSALS), None)

    def explain(self, servers: str) -> str:
        err = self.refusal()
        if err is not None and err.code() == KafkaError._AUTHENTICATION:
            return (
                f"Kafka at {servers} refused K2's credentials ({err.str()}). Check K2_KAFKA_SASL_USERNAME, "
                "K2_KAFKA_SASL_PASSWORD and K2_KAFKA_SASL_MECHANISM."
            )
        if err is not None:
            return (
                f"the TLS handshake with Kafka at {servers} failed ({err.str()}). Set K2_KAFKA_SSL_CA_FILE to "
                "the CA certificate (PEM) that signed the brokers' certificates, or check "
                "K2_KAFKA_SECURITY_PROTOCOL."
            )
        last = f" (last error: {self.seen[-1].str()})" if self.seen else ""
        return (
            f"cannot reach Kafka at {servers}{last}: is the stack up? Run `make stack-up`, or set "
            "K2_KAFKA_BOOTSTRAP_SERVERS (and K2_KAFKA_SECURITY_PROTOCOL, if the listener wants TLS or SASL)."
        )


def cluster_metadata(client: _Client, settings: Settings, errors: ConnectErrors, timeout_s: float) -> Any:
    """The cluster's metadata (topics, partitions) through ``client``, built with ``errors`` as its error_cb.

    Raises:
        ServiceUnavailable: within ``timeout_s`` if the cluster does not answer, and within about a
            second if it answers but refuses K2's credentials or certificate (librdkafka would
            otherwise retry them until the timeout).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            client.poll(0)  # serve the error callbacks
            if errors.refusal() is not None or time.monotonic() >= deadline:
                raise errors.unavailable(settings) from exc


def client_conf(settings: Settings, *, errors: ConnectErrors | None = None, **extra: Any) -> dict[str, Any]:
    """``bootstrap.servers``, the security settings and the quiet logger, plus ``extra`` (librdkafka names).

    With ``errors``, the client reports its connection errors to it (see :meth:`ConnectErrors.unavailable`).
    """
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **security_conf(settings),
        "logger": LIBRDKAFKA_LOG,
        **extra,
    }
    if errors is not None:
        conf["error_cb"] = errors
    return conf


def log_reader(settings: Settings, *, group: str, isolation: str, errors: ConnectErrors, **extra: Any) -> Consumer:
    """A consumer that reads partitions by assignment, from their start, and never joins ``group`` or commits.

    ``group`` is required by librdkafka only. Each partition reports its end (``_PARTITION_EOF``); a range
    that retention deleted meanwhile restarts at the new log start. ``extra``: more librdkafka settings.
    """
    conf = {
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
        **extra,
    }
    return Consumer(client_conf(settings, errors=errors, **conf))
