"""Which Iceberg catalog K2 writes to.

K2 does not invent its own catalog settings: it reuses pyiceberg's convention, a
``.pyiceberg.yaml`` (in ``$PYICEBERG_HOME`` or ``~``) or ``PYICEBERG_CATALOG__<NAME>__<KEY>``
variables, looked up under ``settings.catalog_name``. Only when nothing is configured
under that name does K2 fall back to an embedded SQLite catalog with a local warehouse
under ``settings.var_dir``, so a laptop run needs no service at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from pyiceberg.catalog import PY_CATALOG_IMPL, Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import S3_CONNECT_TIMEOUT, S3_REQUEST_TIMEOUT
from pyiceberg.utils.config import Config

from k2.errors import CatalogLoadError
from k2.lake.rest import TIMEOUT_PROPERTY, BoundedRestCatalog
from k2.settings import Settings

__all__ = [
    "bounded",
    "catalog_configuration",
    "catalog_is_configured",
    "default_catalog_properties",
    "describe_catalog",
    "load_k2_catalog",
]


def catalog_is_configured(name: str) -> bool:
    """Whether pyiceberg's own configuration (file or environment) defines catalog ``name``."""
    return Config().get_catalog_config(name) is not None


def catalog_configuration(settings: Settings) -> dict[str, object]:
    """pyiceberg's configuration of the catalog K2 uses (empty for the embedded one): secrets included, log redacted."""
    return dict(Config().get_catalog_config(settings.catalog_name) or {})


def default_catalog_properties(var_dir: Path) -> dict[str, str]:
    """Properties of the embedded SQLite catalog kept under ``var_dir/iceberg``; creates the folders."""
    root = (var_dir / "iceberg").resolve()
    warehouse = root / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    return {"uri": f"sqlite:///{root / 'catalog.db'}", "warehouse": warehouse.as_uri()}


def load_k2_catalog(settings: Settings) -> Catalog:
    """The catalog configured for ``settings.catalog_name``, else the embedded SQLite one.

    Raises:
        CatalogLoadError: a catalog is configured under that name but cannot be loaded
            (unknown type, missing key, service unreachable); the message names the catalog.
    """
    name = settings.catalog_name
    # Read now, not at pyiceberg's import (load_catalog alone only sees the configuration
    # of the moment pyiceberg was imported), then pass it in explicitly.
    conf = Config().get_catalog_config(name)
    if conf is not None:
        props = bounded(dict(conf), settings.catalog_timeout_s)
        try:
            if str(props.get("type", "")).lower() == "rest" and PY_CATALOG_IMPL not in props:
                return BoundedRestCatalog(name, **cast(dict[str, str], props))
            return load_catalog(name, **cast(dict[str, str | None], props))
        except Exception as exc:  # pyiceberg raises ValueError, OSError, HTTP errors... give one typed error
            raise CatalogLoadError(
                f"Iceberg catalog {name!r} is configured (.pyiceberg.yaml or PYICEBERG_CATALOG__{name.upper()}__*) "
                f"but could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
    try:
        return SqlCatalog(name, **default_catalog_properties(settings.var_dir))
    except Exception as exc:
        raise CatalogLoadError(
            f"the embedded SQLite catalog under {settings.var_dir / 'iceberg'} could not be opened: {exc}. "
            "Set K2_VAR_DIR to a folder K2 may write, or configure a catalog named "
            f"{settings.catalog_name!r} (.pyiceberg.yaml or PYICEBERG_CATALOG__{settings.catalog_name.upper()}__*)"
        ) from exc


def bounded(props: dict[str, object], timeout_s: float) -> dict[str, object]:
    """Catalog properties with deadlines on network calls, where the user set none.

    pyiceberg's own keys: ``s3.connect-timeout`` and ``s3.request-timeout`` for its S3 file
    IO, and K2's :data:`~k2.lake.rest.TIMEOUT_PROPERTY` for REST requests (see :mod:`k2.lake.rest`).
    """
    out = dict(props)
    out.setdefault(S3_CONNECT_TIMEOUT, str(timeout_s))
    out.setdefault(S3_REQUEST_TIMEOUT, str(max(timeout_s, 60.0)))
    out.setdefault(TIMEOUT_PROPERTY, str(timeout_s))
    return out


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def describe_catalog(catalog: Catalog) -> str:
    """One line naming a catalog, its kind, URI and warehouse; credentials are never shown."""
    props = catalog.properties
    parts = [f"{catalog.name} ({type(catalog).__name__})"]
    for key in ("uri", "warehouse"):
        if props.get(key):
            parts.append(f"{key}={_without_credentials(str(props[key]))}")
    return " ".join(parts)
