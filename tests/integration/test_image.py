"""The image, built from ``Dockerfile`` and run as the Deployment runs it, against the local stack.

``make test-image`` (``K2_TEST_IMAGE=1``): ``deploy/image/build.py`` builds the image, or finds
it already built from this tree by its content hash (about 9 minutes from nothing on the
2-core machine, a few seconds when nothing changed; too long for ``make test``). The
container shares the host's network, keeps its root read-only with a tmpfs where the
Deployment mounts its emptyDirs, drops every capability and is stopped with ``docker stop``.
``k2 init`` runs in the image (the Job's command); the sample is replayed and the law
checked (``k2 audit``) from the host's venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.k2env import ROOT, K2Env

pytestmark = [pytest.mark.image, pytest.mark.rest]

BUILD = ROOT / "deploy" / "image" / "build.py"
SAMPLE = ROOT / "data" / "sample"
EVENTS = 2243 + 2609
UID = 10001
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert not check or done.returncode == 0, f"docker {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """``k2:<content hash>``, built unless this tree's image is already there."""
    done = subprocess.run(
        [sys.executable, str(BUILD)], cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False
    )
    assert done.returncode == 0, done.stderr
    print(done.stderr, end="")
    return done.stdout.split()[-1]


class Container:
    """One ``docker run`` of the image, on the host's network, locked down as the Deployment does it."""

    def __init__(self, image: str, env: K2Env, *command: str, detach: bool = True) -> None:
        self.name = f"k2-test-{uuid.uuid4().hex[:8]}"
        settings = {k: v for k, v in env.env.items() if k.startswith(("K2_", "PYICEBERG_", "AWS_"))}
        settings.pop("K2_VAR_DIR")  # the image's own, /var/lib/k2
        settings["K2_WEB_HOST"] = "127.0.0.1"
        self.port = int(settings["K2_WEB_PORT"])
        run = ["run", "--name", self.name, "--network", "host", "--read-only", "--cap-drop", "ALL"]
        run += ["--security-opt", "no-new-privileges", "--stop-timeout", "45"]
        run += ["--tmpfs", "/tmp", "--tmpfs", f"/var/lib/k2:uid={UID},gid={UID}"]
        for key, value in sorted(settings.items()):
            run += ["--env", f"{key}={value}"]
        self.output = docker(*run, "--detach" if detach else "--rm", image, *command, timeout=600)

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name)

    def logs(self, tail: int = 60) -> str:
        done = subprocess.run(["docker", "logs", "--tail", str(tail), self.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def wait_healthy(self, timeout_s: float = 240) -> float:
        began = time.monotonic()
        while (health := self.inspect("{{.State.Health.Status}}")) != "healthy":
            assert self.inspect("{{.State.Running}}") == "true", f"the worker exited:\n{self.logs()}"
            assert time.monotonic() - began < timeout_s, f"not healthy after {timeout_s}s ({health}):\n{self.logs()}"
            time.sleep(1)
        return time.monotonic() - began

    def get(self, path: str) -> str:
        with _NO_PROXY.open(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            body: str = resp.read().decode()
            return body

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", self.name], capture_output=True, timeout=120)


def samples(metrics: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(metrics) for s in f.samples if s.name == name)


@pytest.fixture
def env(stack: Any, tmp_path: Path) -> Iterator[K2Env]:
    """The REST catalog over S3, as in production; nothing flushed by the timer, only by the stop."""
    env = K2Env(stack, tmp_path, "rest", K2_FLUSH_INTERVAL_S="600", K2_FLUSH_MAX_ROWS="1000000")
    env.drop_tables()
    yield env
    env.close()


def test_the_image_holds_what_production_needs_only(image: str) -> None:
    listing = "import importlib.metadata as m, json; print(json.dumps([d.name.lower() for d in m.distributions()]))"
    installed = set(json.loads(docker("run", "--rm", "--entrypoint", "python3", image, "-c", listing)))
    assert "k2" in installed and "pyiceberg" in installed
    assert not installed & {"moto", "pytest", "boto3", "hypothesis", "playwright", "mypy", "ruff", "pip", "setuptools"}


def test_the_worker_runs_healthy_as_non_root_and_lands_the_sample_when_stopped(image: str, env: K2Env) -> None:
    init = Container(image, env, "k2", "init", detach=False)
    assert "table    market_data.trades: created" in init.output, init.output
    worker = Container(image, env)
    try:
        healthy_after = worker.wait_healthy()
        pid = int(worker.inspect("{{.State.Pid}}"))
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [str(UID)] * 4, uids
        assert worker.inspect("{{.Config.User}}") == f"{UID}:{UID}"

        env.k2("replay", str(SAMPLE), "--no-progress")
        deadline = time.monotonic() + 120
        while samples(metrics := worker.get("/metrics"), "k2_events_accepted_total") < EVENTS:
            assert time.monotonic() < deadline, worker.logs()
            time.sleep(1)
        for name in ("k2_faust_messages_received_total", "k2_events_consumed_total", "process_resident_memory_bytes"):
            assert f"\n{name}" in metrics, f"{name} missing from /metrics"  # faust's sensor and K2's, one registry
        assert env.landed() == {}  # all of it buffered: what lands next, the stop landed

        began = time.monotonic()
        docker("stop", worker.name, timeout=120)
        stopped_in = time.monotonic() - began
        assert worker.inspect("{{.State.ExitCode}}") == "0", worker.logs()
        assert "shutdown: flushed" in worker.logs(200)
        env.wait_landed(timeout_s=5)  # already there: nothing runs any more
        audit = env.k2("audit")  # exits 0: the law holds
        print(f"healthy after {healthy_after:.0f} s, stopped in {stopped_in:.1f} s\n{audit.stdout}")
    finally:
        worker.remove()
