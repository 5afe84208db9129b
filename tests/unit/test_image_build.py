"""deploy/image/build.py (``make image``): what it decides without a Docker engine.

The build itself, and the image it makes run against the stack, are tested by
``tests/integration/test_image.py`` (``make test-image``).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_build(root: Path = ROOT) -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "deploy" / "image" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ROOT = root
    module.DOCKERFILE = root / "Dockerfile"
    return module


def test_the_dockerfile_means_for_users_the_official_base_and_pypi() -> None:
    build = load_build()
    assert build.dockerfile_base() == "python:3.11-slim"
    assert "ARG PACKAGES=pypi\n" in (ROOT / "Dockerfile").read_text()


def test_production_dependencies_are_the_projects_own_without_extras() -> None:
    deps = load_build().dependencies()
    assert any(d.startswith("pyiceberg[") for d in deps) and any(d.startswith("setuptools") for d in deps)
    assert not [d for d in deps if d.startswith(("moto", "pytest"))]


def test_the_content_hash_follows_what_goes_into_the_image(tmp_path: Path) -> None:
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / "app.py").write_text("app = None\n")
    build = load_build(tmp_path)
    first = build.content_hash({}, "sha256:base", "")
    (tmp_path / "k2" / "__pycache__").mkdir()
    (tmp_path / "k2" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert build.content_hash({}, "sha256:base", "") == first  # not in the build context
    assert build.content_hash({}, "sha256:other", "") != first
    assert build.content_hash({"PACKAGES": "wheelhouse"}, "sha256:base", "key") != first
    (tmp_path / "k2" / "app.py").write_text("app = 1\n")
    assert build.content_hash({}, "sha256:base", "") != first


def test_the_wheelhouse_is_made_by_the_bases_python_only(tmp_path: Path) -> None:
    other = tmp_path / "python3.12"
    other.write_text("#!/bin/sh\necho 3 12\n")
    other.chmod(0o755)
    build = load_build()
    with pytest.raises(build.ImageError, match=r"Python 3\.11.*PYTHON3="):
        build.wheelhouse(str(other))
