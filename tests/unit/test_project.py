"""The project's promises about itself: README commands, compose services, --help everywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k2.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"## Set up on a fresh machine\s+```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert text.index("## Set up on a fresh machine") < text.index("## Looking at the data")


def test_compose_parses_and_has_every_service_the_readme_names() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## With Docker") :].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z0-9-]+)`", section.split("(the image")[0]))
    assert named, "the README's Docker section names the services"
    assert named <= services, f"named in README but not in compose: {named - services}"
    assert {
        "kafka",
        "schema-registry",
        "minio",
        "iceberg-rest",
        "postgres",
        "prometheus",
        "grafana",
        "k2-worker",
    } <= services
    worker = compose["services"]["k2-worker"]
    assert worker["build"] == "."


def test_dockerfile_runs_the_worker_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["faust", "-A", "k2.app", "worker"' in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [None, *_subcommands()])
def test_every_command_has_help(command: str | None) -> None:
    args = [sys.executable, "-m", "k2.cli.main", *([command] if command else []), "--help"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "usage: k2" in out
    assert len(out.splitlines()) > 5


def test_unknown_command_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "k2.cli.main", "nope"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
