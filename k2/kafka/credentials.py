"""faust's ``broker_credentials`` built from K2's Kafka security settings (the worker's side of
``k2.kafka.security``, kept apart because only the worker may import faust)."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from k2.kafka.security import sasl_password, ssl_context, uses_sasl, uses_tls
from k2.settings import Settings

__all__ = ["broker_credentials"]


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """faust's ``broker_credentials`` for the security settings (``None``: plaintext)."""
    context = ssl_context(settings) if uses_tls(settings) else None
    if uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=sasl_password(settings),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
