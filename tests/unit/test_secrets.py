"""The redactor: registered secrets and the passwords of URLs never leave the process."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from k2.secrets import MASK, Redactor, credential_key, install_log_redaction, redactor_for
from k2.settings import Settings


def test_secrets_and_url_passwords_are_masked() -> None:
    r = Redactor()
    r.add(SecretStr("svc:hunter2-registry"), None, "ab")
    r.add_properties(
        {"s3.secret-access-key": "AKIA-SECRET-9", "uri": "postgresql://k2:pg-pass-7@db/k2", "type": "rest"}
    )
    text = r("auth svc:hunter2-registry key AKIA-SECRET-9 at postgresql://k2:pg-pass-7@db/k2 and http://u:other@h/x")
    assert "hunter2" not in text and "AKIA" not in text and "pg-pass" not in text and "other" not in text
    assert f"postgresql://k2:{MASK}@db/k2" in text and "type" not in text
    assert r("short ab stays") == "short ab stays"  # too short to be registered


@pytest.mark.parametrize(
    ("key", "secret"),
    [("s3.secret-access-key", True), ("token", True), ("credential", True), ("adls.account-key", True), ("uri", False)],
)
def test_credential_keys(key: str, secret: bool) -> None:
    assert credential_key(key) is secret


def test_settings_catalog_and_environment_feed_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYICEBERG_CATALOG__K2__TOKEN", "tok-from-env-1")
    settings = Settings(
        schema_registry_basic_auth="u:registry-pw-3",  # type: ignore[arg-type]
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="k2",
        kafka_sasl_password="kafka-pw-6",  # type: ignore[arg-type]
        kafka_ssl_key_password="key-pw-7",  # type: ignore[arg-type]
    )
    r = redactor_for(
        settings, {"AWS_SECRET_ACCESS_KEY": "aws-secret-5", "PYICEBERG_CATALOG__K2__TOKEN": "tok-from-env-1"}
    )
    assert r("registry-pw-3 aws-secret-5 tok-from-env-1") == f"{MASK} {MASK} {MASK}"
    assert r("kafka-pw-6 key-pw-7") == f"{MASK} {MASK}"
    assert "kafka-pw-6" not in repr(settings) and "key-pw-7" not in str(settings)


def test_log_records_are_redacted_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    r = Redactor()
    r.add("planted-secret-42")
    install_log_redaction(r)
    log = logging.getLogger("k2.test.secrets")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s", "planted-secret-42")
        try:
            raise ValueError("bad token planted-secret-42")
        except ValueError:
            log.exception("failed")
    assert "planted-secret-42" not in caplog.text
    assert caplog.records[0].getMessage() == f"connecting with {MASK}"
    assert "planted-secret-42" not in (caplog.records[1].exc_text or "")
    install_log_redaction(Redactor())  # leave the process as it was found (nothing registered)


def test_a_redacted_record_formats_through_faust_and_modes_formatter() -> None:
    """Seen in every worker log: "--- Logging error --- ... not all arguments converted" for each redacted
    record (the settings line at start): mode's formatter turns args=None into (None,) and formats again."""
    import logging

    from mode.utils.logging import ExtensionFormatter

    from k2.secrets import install_log_redaction

    install_log_redaction(lambda text: text.replace("hunter2", "***"))
    record = logging.getLogger("k2.test").makeRecord("k2.test", logging.INFO, __file__, 1, "pw: %s", ("hunter2",), None)
    assert ExtensionFormatter(fmt="%(message)s").format(record) == "pw: ***"
