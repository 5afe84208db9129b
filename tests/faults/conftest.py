"""Fixtures of the fault suite: the session's local stack, the configuration, and scenario factories.

The stack is the integration suite's (``tests/integration/conftest.py``: started once per
session, left running), with the ``rest`` profile: the catalog faults need the REST
catalog, and every scenario runs on it so that all of them judge the same deployment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.config import Config
from tests.faults.scenario import Scenario, ScenarioFactory
from tests.integration.conftest import stack  # the session fixture, shared with the integration suite

__all__ = ["stack"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    profiles = {p.strip() for p in os.environ.get("K2_TEST_PROFILES", "rest").replace(" ", ",").split(",")}
    if "rest" in profiles:
        return
    skip = pytest.mark.skip(reason="the fault suite needs the rest profile (K2_TEST_PROFILES)")
    for item in items:
        if "faults" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def faults_config() -> Config:
    config = Config.from_env()
    print(
        f"\nfault suite: {config.version} version, seed {config.seed}, law from {config.law}, "
        f"report {config.report_path}"
    )
    return config


@pytest.fixture
def scenario(stack: Any, tmp_path: Path, faults_config: Config) -> Iterator[ScenarioFactory]:
    """Make the test's scenario; whatever happens, its workers stop and the stack is whole again after it."""
    made: list[Scenario] = []

    def make(name: str, title: str, **overrides: str) -> Scenario:
        sc = Scenario(name, title, stack, tmp_path / name, faults_config, **overrides)
        made.append(sc)
        return sc

    yield make
    for sc in made:
        sc.close()
