"""Writer-schema cache and contract registration, against confluent-kafka's in-memory registries."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry._async.mock_schema_registry_client import AsyncMockSchemaRegistryClient
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.common.schema_registry_client import SchemaVersion

from k2.avro.registry import WriterSchemaCache, fetch_schema_text, register_contracts, registry_conf
from k2.avro.schemas import CONTRACTS
from k2.errors import RegistryUnavailable, SchemaRegistrationError, UndecodableError, UnknownSchemaId, WrongSubject
from k2.settings import Settings

TRADE_SUBJECT = "market.trades.raw-value"


class FakeAsyncRegistry(AsyncMockSchemaRegistryClient):
    """The library's async mock plus the versions endpoint, call counts and injectable failures."""

    def __init__(self, *, versions_supported: bool = True) -> None:
        super().__init__({"url": "mock://k2-registry-tests"})
        self.calls: Counter[str] = Counter()
        self.fail_with: BaseException | None = None
        self.versions_supported = versions_supported

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if self.fail_with is not None:
            raise self.fail_with

    async def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self._maybe_fail("get_schema")
        return await super().get_schema(schema_id, *args, **kwargs)

    async def get_schema_versions(self, schema_id: int, *args: Any, **kwargs: Any) -> list[SchemaVersion]:
        self._maybe_fail("get_schema_versions")
        if not self.versions_supported:
            raise SchemaRegistryError(404, 404, "RESTEASY003210: Could not find resource for full path")
        store = self._store
        return [
            SchemaVersion(rs.subject, rs.version)
            for schemas in store.subject_schemas.values()
            for rs in schemas
            if rs.schema_id == schema_id
        ]

    async def lookup_schema(self, subject_name: str, schema: Schema, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("lookup_schema")
        return await super().lookup_schema(subject_name, schema, *args, **kwargs)


async def registered(client: FakeAsyncRegistry, subject: str = TRADE_SUBJECT, name: str = "trade") -> int:
    return await client.register_schema(subject, Schema(CONTRACTS[name].schema_str, "AVRO"))


async def test_writer_schema_is_fetched_once_and_parsed() -> None:
    client = FakeAsyncRegistry()
    schema_id = await registered(client)
    cache = WriterSchemaCache(client)
    first = await cache.writer_schema(schema_id)
    second = await cache.writer_schema(schema_id)
    assert first is second
    assert client.calls["get_schema"] == 1
    assert first.subjects == (TRADE_SUBJECT,)
    assert first.version_in(TRADE_SUBJECT) == 1
    assert first.parsed["name"] == "com.k2.market_data.Trade"
    assert first.parsed["fields"][3]["type"] == {"type": "long"}  # timestamp-millis read as int


async def test_unknown_id_raises_and_is_remembered_briefly() -> None:
    now = [0.0]
    client = FakeAsyncRegistry()
    cache = WriterSchemaCache(client, negative_ttl_s=30, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(UnknownSchemaId) as info:
            await cache.writer_schema(999)
        assert info.value.reason == "unknown_schema_id"
    assert client.calls["get_schema"] == 1
    now[0] = 31.0
    with pytest.raises(UnknownSchemaId):
        await cache.writer_schema(999)
    assert client.calls["get_schema"] == 2


@pytest.mark.parametrize(
    "failure",
    [
        SchemaRegistryError(503, 50301, "unavailable"),
        SchemaRegistryError(500, 50001, "boom"),
        ConnectionRefusedError("refused"),
    ],
)
async def test_transient_failures_are_registry_unavailable_and_not_cached(failure: BaseException) -> None:
    client = FakeAsyncRegistry()
    schema_id = await registered(client)
    cache = WriterSchemaCache(client)
    client.fail_with = failure
    with pytest.raises(RegistryUnavailable):
        await cache.writer_schema(schema_id)
    client.fail_with = None
    assert (await cache.writer_schema(schema_id)).schema_id == schema_id


async def test_httpx_transport_error_is_registry_unavailable() -> None:
    from confluent_kafka.schema_registry.common._httpx_compat import httpx

    client = FakeAsyncRegistry()
    client.fail_with = httpx.ConnectError("connection refused")
    with pytest.raises(RegistryUnavailable):
        await WriterSchemaCache(client).writer_schema(1)


async def test_non_avro_schema_is_undecodable() -> None:
    client = FakeAsyncRegistry()
    schema_id = await client.register_schema("x-value", Schema('{"type":"object"}', "JSON"))
    with pytest.raises(UndecodableError, match="JSON"):
        await WriterSchemaCache(client).writer_schema(schema_id)


async def test_check_subject_accepts_the_right_subject_and_caches() -> None:
    client = FakeAsyncRegistry()
    schema_id = await registered(client)
    cache = WriterSchemaCache(client)
    for _ in range(3):
        assert (await cache.check_subject(schema_id, TRADE_SUBJECT)).schema_id == schema_id
    assert client.calls["get_schema_versions"] == 1  # the versions fetched with the schema suffice


async def test_check_subject_sees_a_registration_made_after_the_fetch() -> None:
    client = FakeAsyncRegistry()
    schema_id = await registered(client)
    cache = WriterSchemaCache(client)
    assert (await cache.writer_schema(schema_id)).subjects == (TRADE_SUBJECT,)
    (original,) = client._store.subject_schemas[TRADE_SUBJECT]  # same id, now also under another subject:
    client._store.subject_schemas["other-value"] = {attrs.evolve(original, subject="other-value", version=7)}
    assert (await cache.check_subject(schema_id, "other-value")).schema_id == schema_id


async def test_check_subject_rejects_another_contracts_id() -> None:
    client = FakeAsyncRegistry()
    quote_id = await registered(client, "market.quotes.raw-value", "quote")
    cache = WriterSchemaCache(client)
    with pytest.raises(WrongSubject) as info:
        await cache.check_subject(quote_id, TRADE_SUBJECT)
    assert info.value.reason == "wrong_subject"
    with pytest.raises(WrongSubject):
        await cache.check_subject(quote_id, TRADE_SUBJECT)
    assert client.calls["get_schema_versions"] == 2  # the negative verdict is cached


async def test_check_subject_falls_back_to_lookup_without_versions_endpoint() -> None:
    client = FakeAsyncRegistry(versions_supported=False)
    trade_id = await registered(client)
    quote_id = await registered(client, "market.quotes.raw-value", "quote")
    cache = WriterSchemaCache(client)
    assert (await cache.writer_schema(trade_id)).versions is None
    assert (await cache.check_subject(trade_id, TRADE_SUBJECT)).schema_id == trade_id
    with pytest.raises(WrongSubject):
        await cache.check_subject(quote_id, TRADE_SUBJECT)
    assert client.calls["lookup_schema"] == 2


class FakeSyncRegistry(MockSchemaRegistryClient):
    """The library's sync mock plus per-subject compatibility (which the mock lacks)."""

    def __init__(self, *, config_needs_subject: bool = False) -> None:
        super().__init__({"url": "mock://k2-register-tests"})
        self.compatibility: dict[str, str] = {}
        self.config_needs_subject = config_needs_subject

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        assert subject_name is not None and level is not None
        if self.config_needs_subject and subject_name not in self.get_subjects():
            raise SchemaRegistryError(404, 40401, f"Subject '{subject_name}' not found.")
        self.compatibility[subject_name] = level
        return level

    def get_schema_versions(self, schema_id: int, *args: Any, **kwargs: Any) -> list[SchemaVersion]:
        return [
            SchemaVersion(rs.subject, rs.version)
            for schemas in self._store.subject_schemas.values()
            for rs in schemas
            if rs.schema_id == schema_id
        ]


@pytest.mark.parametrize("config_needs_subject", [False, True])
def test_register_contracts_is_idempotent_and_sets_backward(config_needs_subject: bool) -> None:
    client = FakeSyncRegistry(config_needs_subject=config_needs_subject)
    settings = Settings()
    first = register_contracts(client, settings)
    assert [(r.subject, r.status) for r in first] == [
        ("market.trades.raw-value", "registered"),
        ("market.quotes.raw-value", "registered"),
        ("market.reference_data-value", "registered"),
    ]
    again = register_contracts(client, settings)
    assert [(r.subject, r.schema_id) for r in again] == [(r.subject, r.schema_id) for r in first]
    assert {r.status for r in again} == {"exists"}
    assert client.compatibility == {r.subject: "BACKWARD" for r in first}
    for subject, schema_id, _ in first:
        assert client.get_schema(schema_id).schema_str == CONTRACTS[_name_of(subject)].schema_str


def _name_of(subject: str) -> str:
    return {"market.trades.raw-value": "trade", "market.quotes.raw-value": "quote"}.get(subject, "reference_data")


def test_register_refusal_is_typed() -> None:
    class Refusing(FakeSyncRegistry):
        def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
            raise SchemaRegistryError(409, 409, "incompatible")

    with pytest.raises(SchemaRegistrationError, match="incompatible"):
        register_contracts(Refusing(), Settings())


def test_register_unreachable_is_registry_unavailable() -> None:
    client = SchemaRegistryClient(registry_conf(Settings(schema_registry_url="http://127.0.0.1:9"), max_retries=0))
    with pytest.raises(RegistryUnavailable):
        register_contracts(client, Settings())


def test_registry_conf_has_a_timeout_and_auth() -> None:
    conf = registry_conf(Settings(schema_registry_basic_auth="u:p"))
    assert conf["timeout"] == 10.0
    assert conf["basic.auth.user.info"] == "u:p"


def test_the_http_library_of_confluents_registry_client_is_where_k2_looks() -> None:
    """k2.avro.registry catches the registry client's transport errors through a private module of confluent-kafka."""
    from confluent_kafka.schema_registry.common import _httpx_compat

    from k2.avro import registry

    assert registry._httpx is _httpx_compat.httpx
    assert issubclass(registry._httpx.ConnectError, registry._httpx.HTTPError)
    assert issubclass(registry._httpx.ReadTimeout, registry._httpx.HTTPError)


async def test_an_unreachable_registry_is_unavailable_not_unknown() -> None:
    from k2.avro.registry import WriterSchemaCache, async_registry_client
    from k2.errors import RegistryUnavailable
    from k2.settings import Settings

    cache = WriterSchemaCache(async_registry_client(Settings(schema_registry_url="http://127.0.0.1:1")))
    try:
        with pytest.raises(RegistryUnavailable):
            await cache.writer_schema(1)
    finally:
        await cache.aclose()


def test_fetch_schema_text_checks_the_subject_as_the_worker_does() -> None:
    client = FakeSyncRegistry()
    trade, quote, _ = register_contracts(client, Settings())
    assert fetch_schema_text(client, trade.schema_id, trade.subject) == CONTRACTS["trade"].schema_str
    with pytest.raises(WrongSubject):
        fetch_schema_text(client, quote.schema_id, trade.subject)
    with pytest.raises(UnknownSchemaId):
        fetch_schema_text(client, 999, trade.subject)


def test_fetch_schema_text_unreachable_is_registry_unavailable() -> None:
    client = SchemaRegistryClient(registry_conf(Settings(schema_registry_url="http://127.0.0.1:9"), max_retries=0))
    with pytest.raises(RegistryUnavailable):
        fetch_schema_text(client, 1, "market.trades.raw-value")
