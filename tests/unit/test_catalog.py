"""Catalog choice: pyiceberg's own configuration when present, else an embedded SQLite catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.catalog import catalog_is_configured, describe_catalog, load_k2_catalog
from k2.errors import CatalogLoadError
from k2.settings import Settings


@pytest.fixture(autouse=True)
def isolated_pyiceberg_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.pyiceberg.yaml or PYICEBERG_* variable of the machine leaks into these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PYICEBERG_HOME", str(home))
    for name in list(__import__("os").environ):
        if name.startswith("PYICEBERG_CATALOG__"):
            monkeypatch.delenv(name)


def test_default_is_sqlite_under_var_dir(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", catalog_name="k2test")
    assert not catalog_is_configured("k2test")
    catalog = load_k2_catalog(settings)
    assert isinstance(catalog, SqlCatalog)
    root = (tmp_path / "var" / "iceberg").resolve()
    assert catalog.properties["uri"] == f"sqlite:///{root / 'catalog.db'}"
    assert catalog.properties["warehouse"] == (root / "warehouse").as_uri()
    assert (root / "warehouse").is_dir()
    catalog.create_namespace("market_data")
    assert (root / "catalog.db").is_file()
    assert "k2test (SqlCatalog)" in describe_catalog(catalog)


def test_configured_catalog_comes_from_pyiceberg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "elsewhere.db"
    monkeypatch.setenv("PYICEBERG_CATALOG__K2TEST__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__K2TEST__URI", f"sqlite:///{db}")
    monkeypatch.setenv("PYICEBERG_CATALOG__K2TEST__WAREHOUSE", (tmp_path / "wh").as_uri())
    settings = Settings(var_dir=tmp_path / "var", catalog_name="k2test")
    assert catalog_is_configured("k2test")
    catalog = load_k2_catalog(settings)
    assert catalog.properties["uri"] == f"sqlite:///{db}"
    assert not (tmp_path / "var").exists()


def test_configured_catalog_comes_from_pyiceberg_yaml(tmp_path: Path) -> None:
    db = tmp_path / "yaml.db"
    (tmp_path / "home" / ".pyiceberg.yaml").write_text(
        f"catalog:\n  k2test:\n    type: sql\n    uri: sqlite:///{db}\n    warehouse: {(tmp_path / 'wh').as_uri()}\n"
    )
    catalog = load_k2_catalog(Settings(var_dir=tmp_path / "var", catalog_name="k2test"))
    assert catalog.properties["uri"] == f"sqlite:///{db}"


def test_a_configured_catalog_that_cannot_load_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYICEBERG_CATALOG__K2TEST__TYPE", "no-such-type")
    with pytest.raises(CatalogLoadError, match="'k2test' is configured"):
        load_k2_catalog(Settings(var_dir=tmp_path / "var", catalog_name="k2test"))


def test_description_hides_credentials() -> None:
    class Fake:
        name = "k2"
        properties = {"uri": "https://user:secret@catalog.example:8181/api", "warehouse": "s3://lake", "token": "t0k"}

    text = describe_catalog(Fake())  # type: ignore[arg-type]
    assert "secret" not in text and "t0k" not in text and "user" not in text
    assert "https://catalog.example:8181/api" in text
