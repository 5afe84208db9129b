"""Facts about the local stack itself that K2 relies on (deploy/local/stack.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SR_JSON = "application/vnd.schemaregistry.v1+json"


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": _SR_JSON})
    try:
        with _HTTP.open(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_broker_answers_metadata(stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=15)
    host, port = stack.kafka_bootstrap.rsplit(":", 1)
    assert [(b.host, b.port) for b in metadata.brokers.values()] == [(host, int(port))]
    assert metadata.cluster_id


def test_broker_does_not_create_topics_on_demand(stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    name = f"k2-stack-test-{uuid.uuid4().hex}"
    asked = admin.list_topics(topic=name, timeout=15)
    assert asked.topics[name].error is not None  # unknown topic, not silently created
    assert name not in admin.list_topics(timeout=15).topics


def test_registry_ccompat_subjects_answer(stack: Stack) -> None:
    status, subjects = _http("GET", f"{stack.schema_registry_url}/subjects")
    assert status == 200
    assert isinstance(subjects, list)


def test_registry_ids_behave_like_confluent(stack: Stack) -> None:
    base = stack.schema_registry_url
    suffix = uuid.uuid4().hex[:12]
    first, second = f"k2-stack-test-{suffix}-a-value", f"k2-stack-test-{suffix}-b-value"
    v1 = {"type": "record", "name": "T", "namespace": "k2.test", "fields": [{"name": "px", "type": "double"}]}
    v2 = {**v1, "fields": [*v1["fields"], {"name": "qty", "type": "long", "default": 0}]}
    breaking = {**v1, "fields": [*v1["fields"], {"name": "venue", "type": "string"}]}
    try:
        status, config = _http("PUT", f"{base}/config/{first}", {"compatibility": "BACKWARD"})
        assert (status, config) == (200, {"compatibilityLevel": "BACKWARD"})

        status, registered = _http("POST", f"{base}/subjects/{first}/versions", {"schema": json.dumps(v1)})
        assert status == 200, registered
        schema_id = registered["id"]
        # The same schema again, reformatted, or under another subject: the same id, as with Confluent.
        for subject, text in ((first, json.dumps(v1)), (first, json.dumps(v1, indent=2)), (second, json.dumps(v1))):
            status, again = _http("POST", f"{base}/subjects/{subject}/versions", {"schema": text})
            assert (status, again) == (200, {"id": schema_id})

        status, by_id = _http("GET", f"{base}/schemas/ids/{schema_id}")
        assert status == 200
        assert json.loads(by_id["schema"]) == v1

        status, evolved = _http("POST", f"{base}/subjects/{first}/versions", {"schema": json.dumps(v2)})
        assert status == 200 and evolved["id"] != schema_id
        status, _ = _http("POST", f"{base}/subjects/{first}/versions", {"schema": json.dumps(breaking)})
        assert status == 409  # BACKWARD rejects a new field without a default
    finally:
        for subject in (first, second):
            _http("DELETE", f"{base}/subjects/{subject}")
            _http("DELETE", f"{base}/subjects/{subject}?permanent=true")


@pytest.mark.rest
def test_rest_catalog_config_answers(stack: Stack) -> None:
    status, config = _http("GET", f"{stack.rest_uri}/v1/config")
    assert status == 200
    assert {"defaults", "overrides"} <= set(config)


@pytest.mark.rest
def test_pyiceberg_round_trip_through_rest_and_s3(stack: Stack) -> None:
    import pyarrow as pa
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("k2", **stack.pyiceberg_properties())
    namespace = f"k2_stack_test_{uuid.uuid4().hex[:12]}"
    identifier = f"{namespace}.trades"
    catalog.create_namespace(namespace)
    try:
        schema = pa.schema([pa.field("symbol", pa.string()), pa.field("price", pa.float64())])
        table = catalog.create_table(identifier, schema=schema)
        assert table.metadata_location.startswith(f"s3://{stack.s3_bucket}/")
        table.append(pa.table({"symbol": ["BHP", "CBA", "CSL"], "price": [45.1, 120.5, 290.0]}, schema=schema))

        rows = catalog.load_table(identifier).scan().to_arrow().sort_by("symbol")
        assert rows.column("symbol").to_pylist() == ["BHP", "CBA", "CSL"]
        assert rows.column("price").to_pylist() == [45.1, 120.5, 290.0]
    finally:
        if catalog.table_exists(identifier):
            catalog.purge_table(identifier)
        catalog.drop_namespace(namespace)
