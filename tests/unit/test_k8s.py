"""deploy/k8s: decoded strictly into the real Kubernetes API types, and what a worker needs to run well.

``deploy/k8s/validate`` is a small Go program over ``k8s.io/api`` and ``sigs.k8s.io/yaml``'s
strict decoder (a misspelt field is an error, not silently dropped), which also loads
``docker-compose.yml`` with compose-go against the Compose specification's schema. Its
modules come from the Go module proxy on the first run (``go.sum`` pins them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2.secrets import credential_key
from k2.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    assert go, "go is missing (it is on every machine of this kind)"
    binary = tmp_path_factory.mktemp("validate") / "validate"
    env = os.environ | {"GOFLAGS": "-mod=readonly"}
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=K8S / "validate",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr
    return binary


def run(validator: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(validator), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_manifests_and_compose_decode_strictly(validator: Path) -> None:
    done = run(validator, "-compose", ROOT / "docker-compose.yml", *MANIFESTS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok ") == len(MANIFESTS) + 1
    assert "Deployment/k2-worker" in done.stdout and "compose project k2" in done.stdout


def test_a_misspelt_field_is_refused(validator: Path, tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    text = (K8S / "deployment.yaml").read_text()
    broken.write_text(text.replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:"))
    done = run(validator, broken)
    assert done.returncode == 1 and "unknown field" in done.stderr


def objects() -> Iterator[dict[str, Any]]:
    for path in MANIFESTS:
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    return next(o for o in objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def test_the_worker_is_probed_scraped_spread_bounded_and_given_time_to_flush() -> None:
    worker = one("Deployment", "k2-worker")
    pod = worker["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["faust", "-A", "k2.app", "worker", "-l", "info"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/k2/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/k2/ready"
    assert {"requests", "limits"} <= set(container["resources"])
    settings = one("ConfigMap")["data"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(settings["K2_SHUTDOWN_TIMEOUT_S"]) + 15
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == settings["K2_WEB_PORT"] == str(container["ports"][0]["containerPort"])
    assert pod["spec"]["topologySpreadConstraints"]
    labels = pod["metadata"]["labels"]
    for selector in (
        worker["spec"]["selector"]["matchLabels"],
        one("Service", "k2-worker")["spec"]["selector"],
        one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert one("Job")["spec"]["template"]["spec"]["containers"][0]["command"] == ["k2", "init"]


def test_credentials_are_in_the_secret_never_in_the_config_map() -> None:
    assert not [key for key in one("ConfigMap")["data"] if credential_key(key)]
    assert all(credential_key(key) or "KEY_ID" in key for key in one("Secret")["stringData"])
    kustomized = set(one("Kustomization")["resources"])
    assert kustomized == {p.name for p in MANIFESTS if p.name != "kustomization.yaml"}


def test_the_config_map_and_secret_make_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every K2_* key names a real setting (a typo would be ignored silently), and together they validate."""
    env = one("ConfigMap")["data"] | one("Secret")["stringData"]
    unknown = [key for key in env if key.startswith("K2_") and key[3:].lower() not in Settings.model_fields]
    assert not unknown
    for key in [k for k in os.environ if k.startswith("K2_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("K2_") and key != "K2_VAR_DIR":
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_password is not None


def image_config() -> dict[str, Any]:
    """What the Dockerfile's last stage (the image that runs) declares; continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    config: dict[str, Any] = {"ENV": {}}
    for line in stage:
        instruction, _, rest = line.partition(" ")
        if instruction == "ENV":
            config["ENV"].update(pair.split("=", 1) for pair in shlex.split(rest))
        else:
            config[instruction] = rest
    return config


def test_the_image_runs_what_the_manifests_and_compose_expect() -> None:
    image = image_config()
    settings = one("ConfigMap")["data"]
    for workload in (one("Deployment", "k2-worker"), one("Job")):
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert image["USER"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
        assert container["workingDir"] == image["WORKDIR"] == image["ENV"]["K2_VAR_DIR"] == settings["K2_VAR_DIR"]
        assert container["image"] == "k2:latest"
    worker = one("Deployment", "k2-worker")["spec"]["template"]["spec"]["containers"][0]
    assert json.loads(image["CMD"]) == worker["command"]
    assert image["EXPOSE"] == str(worker["ports"][0]["containerPort"]) == settings["K2_WEB_PORT"]
    assert worker["livenessProbe"]["httpGet"]["path"] in image["HEALTHCHECK"]
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("k2-init", "k2-worker"):
        assert services[name]["image"] == "k2:latest" and services[name]["build"] == "."


def test_every_worker_runs_with_the_allocators_that_keep_its_memory_flat() -> None:
    """Arrow's jemalloc pool and two glibc arenas (README, Memory): the image, the Deployment, compose,
    `make run`'s worker and the benchmark's all start workers with the same settings."""
    import importlib.util

    from bench.runners import ALLOCATOR_ENV

    spec = importlib.util.spec_from_file_location("local_worker", ROOT / "deploy" / "local" / "worker.py")
    assert spec is not None and spec.loader is not None
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    expected = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "MALLOC_ARENA_MAX": "2"}
    assert ALLOCATOR_ENV == local.ALLOCATOR_ENV == expected
    assert expected.items() <= image_config()["ENV"].items()
    worker = one("Deployment", "k2-worker")["spec"]["template"]["spec"]["containers"][0]
    assert expected.items() <= {e["name"]: e.get("value") for e in worker["env"]}.items()
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("k2-init", "k2-worker"):
        assert expected.items() <= services[name]["environment"].items()
