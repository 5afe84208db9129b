"""K2's typed errors, in one flat module so callers can catch by meaning, not by library.

Two families matter to the worker:

* :class:`DecodeError` and its subclasses describe a *record* that can never be
  read as it is (bad framing, unknown schema id, wrong subject, garbage bytes).
  Such a record is routed to the rejects topic with the error's ``reason`` code.
* :class:`RegistryUnavailable` describes a *service* that is briefly unreachable.
  It is transient: the caller must retry (or stop and let Kafka redeliver), never
  reject the record, or good data would be thrown away during a registry blip.

To add an error: subclass the right base and set ``reason`` as a class attribute
(a stable snake_case string; it ends up in rejects and metrics, so never rename it).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CatalogLoadError",
    "DecodeError",
    "InvalidValue",
    "K2Error",
    "LakeCorrupt",
    "NotConfluentFramed",
    "NotInitialised",
    "RegistryUnavailable",
    "ReplayInputError",
    "SchemaRegistrationError",
    "ServiceUnavailable",
    "SettingsError",
    "TableSchemaMismatch",
    "UndecodableError",
    "UnknownSchemaId",
    "WrongSubject",
    "describe",
    "is_unavailable",
    "one_line",
]

MAX_DETAIL = 1000
"""Longest reject detail, in characters: it is a header on market.rejects and a column, not a dump
(the record's own bytes are kept beside it)."""


class K2Error(Exception):
    """Base of every error K2 raises on purpose, so a CLI can turn them into one-line messages."""


class DecodeError(K2Error):
    """A Kafka record that cannot be decoded; permanent for that record, so it is rejected.

    ``reason`` is the machine-readable code written to the rejects topic.
    """

    reason: ClassVar[str] = "decode_error"


class NotConfluentFramed(DecodeError):
    """The value is shorter than the 5-byte Confluent header or its magic byte is not 0."""

    reason: ClassVar[str] = "not_confluent_framed"


class UnknownSchemaId(DecodeError):
    """The registry answered 404 for the schema id in the header (it never existed or was deleted)."""

    reason: ClassVar[str] = "unknown_schema_id"


class WrongSubject(DecodeError):
    """The schema id exists but is not registered under the subject expected for this topic."""

    reason: ClassVar[str] = "wrong_subject"


class UndecodableError(DecodeError):
    """The Avro body does not decode with its writer schema: truncated, trailing bytes or garbage."""

    reason: ClassVar[str] = "undecodable"


class InvalidValue(DecodeError):
    """A record that decodes but breaks a domain rule (e.g. a price of 0); permanent, so it is rejected.

    It subclasses :class:`DecodeError` so the worker routes it to the rejects path with the
    others. ``field`` and ``value`` say what was wrong; validators *return* it (errors as
    data, no raise on the hot path) and callers may raise it where an exception suits.
    """

    reason: ClassVar[str] = "invalid_value"

    def __init__(self, field: str, value: object, detail: str) -> None:
        super().__init__(f"{field}={value!r}: {detail}")
        self.field = field
        self.value = value
        self.detail = detail


class SettingsError(K2Error):
    """A ``K2_*`` variable holds a value K2 cannot use."""


class CatalogLoadError(K2Error):
    """The Iceberg catalog configured for K2 could not be loaded (bad config, unreachable service)."""


class LakeCorrupt(K2Error):
    """The lake's own bookkeeping cannot be read (a malformed ``k2.offsets.*`` mark): nothing can be judged."""


class ServiceUnavailable(K2Error):
    """A service K2 needs (Kafka, the registry, the catalog) cannot be reached; the message says what to do."""


class RegistryUnavailable(ServiceUnavailable):
    """The schema registry could not be reached or answered 5xx: transient, retry, never reject."""


class SchemaRegistrationError(K2Error):
    """The registry refused a K2 contract (incompatible with the subject's history, or invalid)."""


class NotInitialised(K2Error):
    """A topic K2 writes to is missing, or its contract is not registered: run `k2 init` first."""


class ReplayInputError(K2Error):
    """The replay input folder is missing, lacks the expected layout, or names unknown symbols."""


class TableSchemaMismatch(K2Error):
    """An existing Iceberg table lacks a column K2 writes, or has it with another type or nullability."""


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` as one printable line of at most ``limit`` characters: how an error becomes a reject detail.

    A 10 MB value, a registry error with an HTML body or a lone surrogate (which no UTF-8
    column can hold) must not make the reject itself unwritable. Cut first, then escape,
    so the cost is bounded whatever the input.
    """
    if len(text) > limit:
        text = text[: limit - 20] + f"...({len(text)} chars)"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:limit]
    return text


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, or its type alone when it has no message (``TimeoutError``)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a service is unavailable for now (worth waiting out), not that a request is wrong.

    The one place that decides it: K2's :class:`ServiceUnavailable`, timeouts, refused or reset
    connections (``OSError``: requests' and aiohttp's connection errors are ``OSError`` too), a
    SQLite catalog whose database another process holds locked, Kafka's retriable errors, and a
    catalog's "unavailable" and server-error answers. Anything else is a bug or a bad request:
    retrying it would only hide it.
    """
    from aiokafka import errors as kafka_errors
    from pyiceberg import exceptions as iceberg_errors
    from sqlalchemy import exc as sql_errors

    if isinstance(exc, ServiceUnavailable | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError)
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        return True
    if isinstance(exc, kafka_errors.KafkaError):
        return bool(exc.retriable)
    if isinstance(exc, iceberg_errors.ServiceUnavailableError | iceberg_errors.ServerError):
        return True
    return isinstance(exc, sql_errors.OperationalError) and "locked" in str(exc)
