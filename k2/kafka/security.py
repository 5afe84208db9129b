"""How K2's Kafka clients authenticate and encrypt: one place for both client libraries.

K2 talks to Kafka through two libraries: the worker through faust (aiokafka), the ``k2``
commands and the audit through confluent-kafka (librdkafka). Both are configured from the
same ``K2_KAFKA_SECURITY_PROTOCOL`` / ``K2_KAFKA_SASL_*`` / ``K2_KAFKA_SSL_*`` settings here,
so a managed Kafka (SASL_SSL with SCRAM, or mutual TLS) needs those variables and nothing else.
faust's own credentials are built in ``k2.kafka.credentials``: this module must not import faust,
which reads ``--loop`` from ``sys.argv`` when imported and would take ``k2 replay --loop N`` for an
event-loop name.
"""

from __future__ import annotations

import ssl
from typing import Any

from k2.settings import Settings

__all__ = ["sasl_password", "security_conf", "ssl_context", "uses_sasl", "uses_tls"]


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL")


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol.endswith("SSL")


def sasl_password(settings: Settings) -> str:
    if settings.kafka_sasl_password is None:  # the settings refuse SASL without one
        raise ValueError("K2_KAFKA_SASL_PASSWORD is not set")
    return settings.kafka_sasl_password.get_secret_value()


def security_conf(settings: Settings) -> dict[str, Any]:
    """librdkafka's properties for the security settings."""
    conf: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol.lower()}
    if uses_sasl(settings):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = sasl_password(settings)
    if uses_tls(settings):
        if settings.kafka_ssl_ca_file is not None:
            conf["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
            conf["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
            conf["ssl.key.location"] = str(settings.kafka_ssl_key_file)
        if settings.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return conf


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A verifying TLS context: the given CA (else the system's), and the client certificate for mutual TLS."""
    ca = settings.kafka_ssl_ca_file
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
        key_password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            str(settings.kafka_ssl_cert_file),
            str(settings.kafka_ssl_key_file),
            key_password.get_secret_value() if key_password is not None else None,
        )
    return context
