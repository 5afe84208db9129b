"""K2 against a Kafka that wants SASL over TLS, as a managed Kafka does: the local stack's SASL_SSL listener.

Every client K2 builds (``k2 init``'s admin client, ``k2 replay``'s producer, the worker's faust
consumer and producer, the audit's reader) is pointed at the secure listener alone, which no
plaintext client can talk to; the law then holds as it does in plaintext. A wrong password or
an unverifiable certificate ends a command with one message naming the cause, and ends a worker
at once rather than leaving it retrying in silence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.k2env import ROOT, K2Env

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
USER, PASSWORD = "k2", "k2-local-secret"  # the local stack's (deploy/local/stack.py)


def secure(stack: Any, **overrides: str) -> dict[str, str]:
    return {
        "K2_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_secure_bootstrap,
        "K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "K2_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "K2_KAFKA_SASL_USERNAME": USER,
        "K2_KAFKA_SASL_PASSWORD": PASSWORD,
        "K2_KAFKA_SSL_CA_FILE": str(stack.kafka_ca_file),
        **overrides,
    }


def test_init_replay_worker_and_audit_over_sasl_ssl(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", **secure(stack))
    try:
        env.k2("init")
        env.k2("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")
        worker = env.start_worker()
        env.wait_landed()
        audit = env.k2("audit")
        assert "law holds" in audit.stdout and "0 missing, 0 doubled" in audit.stdout
        assert env.metric("k2_events_consumed_total") > 0
        env.close()
        assert PASSWORD not in worker.log.read_text(errors="replace")
    finally:
        env.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_the_other_sasl_mechanisms(stack: Any, tmp_path: Path, mechanism: str) -> None:
    env = K2Env(stack, tmp_path, "sqlite", **secure(stack, K2_KAFKA_SASL_MECHANISM=mechanism))
    done = env.k2("init")
    assert "topic" in done.stdout


def test_a_wrong_password_is_named_and_stops_a_worker_at_once(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", **secure(stack))
    env.k2("init")  # topics and tables exist: what fails below is the password alone
    env.env["K2_KAFKA_SASL_PASSWORD"] = "not-the-password"
    commands = (("init",), ("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress"), ("audit",), ("tables",))
    for args in commands:
        done = env.k2(*args, check=False)
        assert done.returncode != 0
        assert "refused K2's credentials" in done.stderr and "K2_KAFKA_SASL_PASSWORD" in done.stderr, done.stderr
        assert "is the stack up" not in done.stderr
        assert "not-the-password" not in done.stdout + done.stderr
    worker = env.start_worker(wait=False)
    started = time.monotonic()
    try:
        worker.proc.wait(timeout=90)
    finally:
        env.close()
    assert worker.proc.returncode != 0 and time.monotonic() - started < 90
    log = worker.log.read_text(errors="replace")
    assert "SaslAuthenticationFailed" in log and "Worker ready" not in log
    assert "not-the-password" not in log


def test_an_unknown_certificate_authority_is_named(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", **secure(stack))
    del env.env["K2_KAFKA_SSL_CA_FILE"]  # the system's CAs do not know the local stack's
    done = env.k2("init", check=False)
    assert done.returncode != 0
    assert "TLS handshake" in done.stderr and "K2_KAFKA_SSL_CA_FILE" in done.stderr, done.stderr
