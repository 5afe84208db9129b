"""Schema-registry access: a forever cache of writer schemas for the worker, and contract registration.

The worker decodes every record with the writer schema named by the id in its header.
Ids are immutable in a Confluent-compatible registry, so a schema fetched once is cached
for the life of the process; only the first record of each id costs a round trip.

confluent-kafka ships an :class:`AsyncSchemaRegistryClient` (httpx-based), so the worker's
path never blocks the event loop; ``k2 init`` and ``k2 replay`` are plain CLIs and use the
sync :class:`SchemaRegistryClient`.

Errors are translated at this boundary into K2's typed errors: 404 for an id becomes
:class:`~k2.errors.UnknownSchemaId` (the record is rejected), while connection errors,
timeouts and 5xx become :class:`~k2.errors.RegistryUnavailable` (transient: retry).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from confluent_kafka.schema_registry import (
    AsyncSchemaRegistryClient,
    Schema,
    SchemaRegistryClient,
    SchemaRegistryError,
)

from k2.avro.codec import ParsedSchema, parse_schema
from k2.avro.schemas import CONTRACTS, Contract
from k2.errors import (
    RegistryUnavailable,
    SchemaRegistrationError,
    UndecodableError,
    UnknownSchemaId,
    WrongSubject,
)
from k2.settings import Settings

try:  # the HTTP library the registry client itself uses (httpx2, or httpx on older installs)
    from confluent_kafka.schema_registry.common._httpx_compat import httpx as _httpx
except ImportError:  # pragma: no cover - older confluent-kafka
    import httpx as _httpx  # type: ignore[no-redef]

__all__ = [
    "COMPATIBILITY",
    "Registration",
    "SubjectVersion",
    "WriterSchema",
    "WriterSchemaCache",
    "async_registry_client",
    "fetch_schema_text",
    "lookup_schema_id",
    "register_contract",
    "register_contracts",
    "registry_client",
    "registry_conf",
]

#: Compatibility set on every contract subject: new schemas must read old data, so the
#: lake (read with the latest schema) can always read what older producers wrote.
COMPATIBILITY = "BACKWARD"

_T = TypeVar("_T")
_TRANSIENT_STATUS = frozenset({408, 429})


def registry_conf(settings: Settings, *, timeout_s: float = 10.0, max_retries: int = 2) -> dict[str, Any]:
    """Client configuration from the settings, with a finite timeout.

    The client's own default is *no* timeout, which would let a hung registry stall the
    worker forever; its default backoff (up to 20 s per retry) is also shortened so that
    :class:`RegistryUnavailable` surfaces within seconds and the caller decides what to do.
    """
    conf: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": timeout_s,
        "max.retries": max_retries,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 2000,
    }
    if settings.schema_registry_basic_auth is not None:
        conf["basic.auth.user.info"] = settings.schema_registry_basic_auth.get_secret_value()
    if settings.schema_registry_ca_file is not None:
        conf["ssl.ca.location"] = str(settings.schema_registry_ca_file)
    return conf


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A sync client for CLIs (``k2 init``, ``k2 replay``); ``mock://`` URLs give an in-memory registry."""
    return SchemaRegistryClient.new_client(registry_conf(settings))


def async_registry_client(settings: Settings) -> AsyncSchemaRegistryClient:
    """An asyncio client for the worker; create it where it will be used (it binds to that loop)."""
    return AsyncSchemaRegistryClient.new_client(registry_conf(settings))


def _is_not_found(exc: SchemaRegistryError) -> bool:
    return exc.http_status_code == 404


def _unavailable(exc: BaseException, what: str) -> RegistryUnavailable:
    return RegistryUnavailable(f"schema registry unavailable while {what}: {exc}")


def _is_transient(exc: SchemaRegistryError) -> bool:
    status = exc.http_status_code or 0
    return status >= 500 or status in _TRANSIENT_STATUS


def _call_sync(what: str, fn: Callable[[], _T]) -> _T:
    """Run one sync registry call, mapping transport failures and 5xx to RegistryUnavailable."""
    try:
        return fn()
    except SchemaRegistryError as exc:
        if _is_transient(exc):
            raise _unavailable(exc, what) from exc
        raise
    except (_httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, what) from exc


async def _call_async(what: str, call: Awaitable[_T]) -> _T:
    """Await one async registry call with the same error mapping as :func:`_call_sync`."""
    try:
        return await call
    except SchemaRegistryError as exc:
        if _is_transient(exc):
            raise _unavailable(exc, what) from exc
        raise
    except (_httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, what) from exc


@dataclass(frozen=True)
class SubjectVersion:
    """One place a schema is registered: a subject and the version number it has there."""

    subject: str
    version: int


@dataclass(frozen=True)
class WriterSchema:
    """A schema as registered, ready to decode with (``parsed`` comes from :func:`k2.avro.codec.parse_schema`).

    ``versions`` is a snapshot taken when the id was first fetched (a schema can later be
    registered under more subjects); None when the registry cannot list them
    (``GET /schemas/ids/{id}/versions`` unsupported), in which case subject checks fall back
    to a lookup of the schema under the expected subject.
    """

    schema_id: int
    schema_str: str
    parsed: ParsedSchema
    versions: tuple[SubjectVersion, ...] | None

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subjects this schema was registered under when fetched (empty if unknown)."""
        return tuple(sv.subject for sv in self.versions or ())

    def version_in(self, subject: str) -> int | None:
        """This schema's version number in ``subject``, if known."""
        for sv in self.versions or ():
            if sv.subject == subject:
                return sv.version
        return None


class WriterSchemaCache:
    """Writer schemas by id, fetched once and kept forever; subject membership checks, cached.

    Concurrent misses are serialised by one lock (misses are rare: one per schema id in
    the life of the process), so an id is never fetched twice. Unknown ids and failed
    subject checks are remembered for ``negative_ttl_s`` only, so a burst of bad records
    costs one round trip, yet a subject registered later is eventually accepted.
    """

    def __init__(
        self,
        client: AsyncSchemaRegistryClient,
        *,
        negative_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._schemas: dict[int, WriterSchema] = {}
        self._unknown_until: dict[int, float] = {}
        self._member: set[tuple[int, str]] = set()
        self._not_member_until: dict[tuple[int, str], float] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> WriterSchemaCache:
        """A cache over a new async client for the configured registry."""
        return cls(async_registry_client(settings))

    async def aclose(self) -> None:
        """Close the HTTP session of the underlying client."""
        await self._client.aclose()

    async def ping(self) -> str:
        """Ask the registry for its subjects (a readiness probe); raises :class:`RegistryUnavailable` if it is down."""
        subjects = await _call_async("listing subjects", self._client.get_subjects())
        return f"{len(subjects)} subject(s)"

    async def writer_schema(self, schema_id: int) -> WriterSchema:
        """The writer schema registered with ``schema_id``.

        Raises :class:`UnknownSchemaId` (404), :class:`UndecodableError` (the id names a
        non-Avro or unparsable schema) or :class:`RegistryUnavailable` (retry later).
        """
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._schemas.get(schema_id)
            if cached is not None:
                return cached
            if self._unknown_until.get(schema_id, 0.0) > self._clock():
                raise UnknownSchemaId(f"schema id {schema_id} is not in the registry")
            fetched = await self._fetch(schema_id)
            self._schemas[schema_id] = fetched
            return fetched

    async def check_subject(self, schema_id: int, subject: str) -> WriterSchema:
        """The writer schema for ``schema_id``, provided it is registered under ``subject``.

        A producer that writes another contract's id (or its own unregistered schema) into
        our topic would otherwise be decoded with the wrong shape. Raises
        :class:`WrongSubject` when it does not belong, plus the errors of :meth:`writer_schema`.
        """
        schema = await self.writer_schema(schema_id)
        key = (schema_id, subject)
        if key in self._member:
            return schema
        if subject in schema.subjects:  # known from the fetch: no round trip
            self._member.add(key)
            return schema
        if self._not_member_until.get(key, 0.0) > self._clock():
            raise WrongSubject(f"schema id {schema_id} is not registered under subject {subject}")
        async with self._lock:
            if key not in self._member:
                if await self._is_member(schema, subject):
                    self._member.add(key)
                    self._not_member_until.pop(key, None)
                else:
                    self._not_member_until[key] = self._clock() + self._negative_ttl_s
                    raise WrongSubject(f"schema id {schema_id} is not registered under subject {subject}")
        return schema

    async def _fetch(self, schema_id: int) -> WriterSchema:
        try:
            schema: Schema = await _call_async(f"fetching schema id {schema_id}", self._client.get_schema(schema_id))
        except SchemaRegistryError as exc:
            if _is_not_found(exc):
                self._unknown_until[schema_id] = self._clock() + self._negative_ttl_s
                raise UnknownSchemaId(f"schema id {schema_id} is not in the registry: {exc}") from exc
            raise _unavailable(exc, f"fetching schema id {schema_id}") from exc
        if (schema.schema_type or "AVRO") != "AVRO":
            raise UndecodableError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        if schema.schema_str is None:
            raise UndecodableError(f"schema id {schema_id} has no schema text")
        try:
            parsed = parse_schema(schema.schema_str)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise UndecodableError(f"schema id {schema_id} does not parse as Avro: {exc}") from exc
        versions = await self._versions(schema_id)
        return WriterSchema(schema_id=schema_id, schema_str=schema.schema_str, parsed=parsed, versions=versions)

    async def _versions(self, schema_id: int) -> tuple[SubjectVersion, ...] | None:
        """Subject-version pairs of an id, or None if the registry does not offer that endpoint."""
        try:
            pairs = await _call_async(
                f"listing versions of schema id {schema_id}", self._client.get_schema_versions(schema_id)
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code in (404, 405, 501):
                return None
            raise _unavailable(exc, f"listing versions of schema id {schema_id}") from exc
        return tuple(
            SubjectVersion(p.subject, p.version) for p in pairs if p.subject is not None and p.version is not None
        )

    async def _is_member(self, schema: WriterSchema, subject: str) -> bool:
        if schema.versions is not None:
            fresh = await self._versions(schema.schema_id)  # may have been registered there since
            if fresh is not None:
                return any(sv.subject == subject for sv in fresh)
        try:
            found = await _call_async(
                f"looking up schema id {schema.schema_id} under {subject}",
                self._client.lookup_schema(subject, Schema(schema.schema_str, "AVRO")),
            )
        except SchemaRegistryError as exc:
            if _is_not_found(exc):
                return False
            raise _unavailable(exc, f"looking up schema id {schema.schema_id} under {subject}") from exc
        return found.schema_id == schema.schema_id


def fetch_schema_text(client: SchemaRegistryClient, schema_id: int, subject: str) -> str:
    """The text of Avro schema ``schema_id``, provided it is registered under ``subject``: the sync
    counterpart of :meth:`WriterSchemaCache.check_subject`, for commands that read records as the worker does.

    Raises:
        UnknownSchemaId: the registry does not know the id (404).
        WrongSubject: the id is not registered under ``subject``.
        UndecodableError: the id names a schema that is not Avro, or has no text.
        RegistryUnavailable: the registry cannot answer.
    """
    what = f"fetching schema id {schema_id}"
    try:
        schema: Schema = _call_sync(what, lambda: client.get_schema(schema_id))
    except SchemaRegistryError as exc:
        if _is_not_found(exc):
            raise UnknownSchemaId(f"schema id {schema_id} is not in the registry: {exc}") from exc
        raise _unavailable(exc, what) from exc
    if (schema.schema_type or "AVRO") != "AVRO":
        raise UndecodableError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
    if schema.schema_str is None:
        raise UndecodableError(f"schema id {schema_id} has no schema text")
    try:
        pairs = _call_sync(what, lambda: client.get_schema_versions(schema_id))
        member = any(p.subject == subject for p in pairs)
    except SchemaRegistryError as exc:
        if exc.http_status_code not in (404, 405, 501):
            raise _unavailable(exc, what) from exc
        member = lookup_schema_id(client, subject, schema.schema_str) == schema_id  # no versions endpoint
    if not member:
        raise WrongSubject(f"schema id {schema_id} is not registered under subject {subject}")
    return schema.schema_str


class Registration(NamedTuple):
    """Outcome of registering one contract: ``status`` is "registered" (new) or "exists"."""

    subject: str
    schema_id: int
    status: str


def lookup_schema_id(client: SchemaRegistryClient, subject: str, schema_str: str) -> int | None:
    """The id of ``schema_str`` registered under ``subject``, or None if it is not registered there.

    Raises :class:`RegistryUnavailable` when the registry cannot answer, and
    :class:`SchemaRegistrationError` when it refuses the lookup (e.g. 401, 422).
    """
    schema = Schema(schema_str, "AVRO")
    try:
        found = _call_sync(f"looking up {subject}", lambda: client.lookup_schema(subject, schema))
    except SchemaRegistryError as exc:
        if _is_not_found(exc):
            return None
        raise SchemaRegistrationError(f"{subject}: lookup refused: {exc}") from exc
    return found.schema_id


def _set_compatibility(client: SchemaRegistryClient, subject: str) -> bool:
    """Set the subject's compatibility; False when the registry needs the subject to exist first."""
    try:
        _call_sync(f"setting compatibility of {subject}", lambda: client.set_compatibility(subject, COMPATIBILITY))
    except SchemaRegistryError as exc:
        if _is_not_found(exc):
            return False
        raise SchemaRegistrationError(f"{subject}: cannot set {COMPATIBILITY} compatibility: {exc}") from exc
    return True


def register_contract(client: SchemaRegistryClient, subject: str, contract: Contract) -> Registration:
    """Register one contract under ``subject`` with BACKWARD compatibility; idempotent.

    Compatibility is set *before* registering, so a changed contract is checked against
    the subject's history. Registries that refuse config on an unknown subject (Apicurio's
    ccompat API answers 404) get it right after the first version instead.
    """
    schema = Schema(contract.schema_str, "AVRO")
    existing = lookup_schema_id(client, subject, contract.schema_str)
    if existing is not None:
        _set_compatibility(client, subject)
        return Registration(subject, existing, "exists")
    compat_set = _set_compatibility(client, subject)
    try:
        schema_id = _call_sync(f"registering {subject}", lambda: client.register_schema(subject, schema))
    except SchemaRegistryError as exc:
        raise SchemaRegistrationError(f"{subject}: registry refused the {contract.name} contract: {exc}") from exc
    if not compat_set and not _set_compatibility(client, subject):
        raise SchemaRegistrationError(f"{subject}: cannot set {COMPATIBILITY} compatibility (subject not found)")
    return Registration(subject, schema_id, "registered")


def register_contracts(
    client: SchemaRegistryClient, settings: Settings, contracts: Iterable[Contract] | None = None
) -> list[Registration]:
    """Register K2's contracts (``k2 init``): one subject per topic, ``<topic>-value``.

    Idempotent: an already-registered schema is looked up, not registered again, and keeps
    its id. Raises :class:`RegistryUnavailable` when the registry cannot be reached and
    :class:`SchemaRegistrationError` when it refuses a contract (e.g. incompatible change).
    """
    chosen = CONTRACTS.values() if contracts is None else contracts
    return [register_contract(client, contract.subject(settings), contract) for contract in chosen]
