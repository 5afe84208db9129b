"""Integration fixtures: the local stack of ``deploy/local/stack.py``, started once per session.

The stack is left running at the end (the next session finds it healthy and starts in well
under a second; CI machines are thrown away). ``K2_TEST_PROFILES`` picks the optional
profiles to start (comma separated, default ``rest``; empty for Kafka and the registry
alone); tests marked ``rest`` are skipped when that profile is not requested, and tests
marked ``image`` unless ``K2_TEST_IMAGE=1`` (``make test-image``). Ports and
the data directory follow the same ``K2_*`` variables as the script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.k2env import K2Env

ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.py"
HOST = "127.0.0.1"


def _profiles() -> frozenset[str]:
    raw = os.environ.get("K2_TEST_PROFILES", "rest")
    return frozenset(p.strip().lower() for p in raw.replace(" ", ",").split(",") if p.strip())


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env) or default)


@dataclass(frozen=True)
class Stack:
    """Where the running stack answers."""

    profiles: frozenset[str]
    kafka_bootstrap: str
    schema_registry_url: str
    rest_uri: str | None = None
    s3_endpoint: str | None = None
    prometheus_url: str | None = None
    s3_bucket: str = "warehouse"
    kafka_secure_bootstrap: str = ""
    kafka_ca_file: Path | None = None

    def pyiceberg_properties(self) -> dict[str, str]:
        """Properties for ``pyiceberg.catalog.load_catalog(name, **props)`` against the REST profile."""
        if self.rest_uri is None or self.s3_endpoint is None:
            raise RuntimeError("the rest profile is not part of this test session (K2_TEST_PROFILES)")
        return {
            "type": "rest",
            "uri": self.rest_uri,
            "s3.endpoint": self.s3_endpoint,
            "s3.access-key-id": "test",
            "s3.secret-access-key": "test",
            "s3.region": "us-east-1",
            "s3.path-style-access": "true",
        }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if "rest" not in _profiles():
        skips["rest"] = pytest.mark.skip(reason="the rest profile is not in K2_TEST_PROFILES")
    if os.environ.get("K2_TEST_IMAGE") != "1":
        skips["image"] = pytest.mark.skip(reason="the image is built and run by `make test-image` (K2_TEST_IMAGE=1)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """Start (or find already running) the local stack; end the whole session if it cannot come up."""
    profiles = _profiles()
    cmd = [sys.executable, str(STACK_SCRIPT), "up"]
    if profiles:
        cmd += ["--profile", ",".join(sorted(profiles))]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.exit(f"`{' '.join(cmd)}` did not finish in {exc.timeout}s:\n{exc.stdout}\n{exc.stderr}", returncode=1)
    if proc.returncode != 0:
        pytest.exit(
            f"the local stack did not come up (`{' '.join(cmd)}` exited {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}",
            returncode=1,
        )
    # Clients must never fall back to a cloud metadata address for credentials or region.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    rest = "rest" in profiles
    return Stack(
        profiles=profiles,
        kafka_bootstrap=f"{HOST}:{_port('K2_KAFKA_PORT', 9092)}",
        schema_registry_url=f"http://{HOST}:{_port('K2_REGISTRY_PORT', 8081)}/apis/ccompat/v7",
        rest_uri=f"http://{HOST}:{_port('K2_REST_PORT', 8181)}" if rest else None,
        s3_endpoint=f"http://{HOST}:{_port('K2_S3_PORT', 9000)}" if rest else None,
        prometheus_url=f"http://{HOST}:{_port('K2_PROMETHEUS_PORT', 9090)}" if "prometheus" in profiles else None,
        s3_bucket=os.environ.get("K2_S3_BUCKET", "warehouse"),
        # The SASL_SSL listener (see deploy/local/stack.py): self-signed TLS, user k2.
        kafka_secure_bootstrap=f"{HOST}:{_port('K2_KAFKA_SECURE_PORT', 9094)}",
        kafka_ca_file=ROOT / (os.environ.get("K2_VAR_DIR") or "var") / "conf" / "kafka" / "tls" / "ca.pem",
    )


@pytest.fixture
def sqlite_env(stack: Stack, tmp_path: Path) -> Iterator[K2Env]:
    """An initialised K2 deployment on the embedded SQLite catalog, its workers stopped at the end."""
    env = K2Env(stack, tmp_path, "sqlite")
    env.k2("init")
    yield env
    env.close()
