"""One set of ``K2_KAFKA_*`` security settings configures both of K2's Kafka client libraries alike."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
import trustme
from confluent_kafka import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import CollectorRegistry

from k2.admin.clients import ConnectErrors, client_conf
from k2.app import create_app
from k2.errors import SettingsError
from k2.kafka.credentials import broker_credentials
from k2.kafka.security import security_conf
from k2.settings import Settings, get_settings


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a client certificate and key it signed, as PEM files."""
    ca = trustme.CA()
    client = ca.issue_cert("k2-worker")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def scram(ca: Path) -> Settings:
    return Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="k2",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]
        kafka_ssl_ca_file=ca,
    )


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings()
    assert security_conf(settings) == {"security.protocol": "plaintext"}
    assert broker_credentials(settings) is None


def test_sasl_ssl_with_scram_for_librdkafka(pki: dict[str, Path]) -> None:
    conf = client_conf(scram(pki["ca"]))
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("k2", "s3cret")
    assert conf["ssl.ca.location"] == str(pki["ca"])


def test_sasl_ssl_with_scram_for_faust_and_aiokafka(pki: dict[str, Path]) -> None:
    credentials = broker_credentials(scram(pki["ca"]))
    assert isinstance(credentials, faust.SASLCredentials)
    # What faust hands aiokafka's consumer, producer and admin client.
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("k2", "s3cret")
    context = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the given CA, not the system's


def test_sasl_plaintext_has_no_tls() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="k2",
        kafka_sasl_password="pw",  # type: ignore[arg-type]
    )
    auth = credentials_to_aiokafka_auth(broker_credentials(settings))
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)
    assert "ssl.ca.location" not in security_conf(settings)


def test_mutual_tls(pki: dict[str, Path]) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki["ca"],
        kafka_ssl_cert_file=pki["cert"],
        kafka_ssl_key_file=pki["key"],
    )
    conf = security_conf(settings)
    assert conf["ssl.certificate.location"] == str(pki["cert"]) and conf["ssl.key.location"] == str(pki["key"])
    assert "sasl.mechanism" not in conf
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


def test_the_worker_app_carries_the_credentials(pki: dict[str, Path]) -> None:
    app = create_app(scram(pki["ca"]), CollectorRegistry())
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.mechanism.value == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "K2_KAFKA_SASL_USERNAME": "k2"},
            "K2_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs K2_KAFKA_SASL_USERNAME and K2_KAFKA_SASL_PASSWORD",
        ),
        ({"K2_KAFKA_SECURITY_PROTOCOL": "TLS"}, "K2_KAFKA_SECURITY_PROTOCOL"),
        ({"K2_KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"}, "K2_KAFKA_SSL_CA_FILE=/nonexistent/ca.pem: no such file"),
        ({"K2_KAFKA_SSL_CERT_FILE": __file__}, "K2_KAFKA_SSL_CERT_FILE and K2_KAFKA_SSL_KEY_FILE go together"),
    ],
)
def test_unusable_security_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert message in str(caught.value)


def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2_KAFKA_SSL_CA_FILE", "")
    assert Settings().kafka_ssl_ca_file is None


@pytest.mark.parametrize(
    ("code", "text", "says"),
    [
        (KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials", "refused K2's credentials"),
        (KafkaError._SSL, "SSL handshake failed: certificate verify failed", "Set K2_KAFKA_SSL_CA_FILE"),
        (KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9 failed: Connection refused", "is the stack up?"),
    ],
)
def test_a_refused_connection_is_named_for_what_it_is(code: int, text: str, says: str) -> None:
    errors = ConnectErrors()
    errors(KafkaError(code, text))
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    message = str(errors.unavailable(Settings(kafka_bootstrap_servers="kafka:9094")))
    assert says in message and "kafka:9094" in message
    if code != KafkaError._TRANSPORT:
        assert text in message
