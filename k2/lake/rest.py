"""pyiceberg's REST catalog with a deadline on every HTTP request.

pyiceberg's ``RestCatalog`` sends its requests through a ``requests.Session`` without a
timeout, so a catalog that accepts connections but never answers (a frozen server, a
half-open load balancer) blocks the calling thread forever: a commit was seen blocked for
97 s with nothing logged. :func:`k2.catalog.load_k2_catalog` loads this subclass for
``type: rest`` (through pyiceberg's own ``py-catalog-impl`` property, unless the user set
one), so every request ends within :data:`TIMEOUT_PROPERTY` seconds and the caller sees an
error it can retry.
"""

from __future__ import annotations

from typing import Any

from pyiceberg.catalog.rest import RestCatalog
from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter

__all__ = ["IMPL", "TIMEOUT_PROPERTY", "BoundedRestCatalog"]

IMPL = "k2.lake.rest.BoundedRestCatalog"
TIMEOUT_PROPERTY = "k2.request-timeout-s"
DEFAULT_TIMEOUT_S = 10.0


class _DeadlineAdapter(HTTPAdapter):
    """Gives every request a (connect, read) timeout unless the caller passed one."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (self.timeout_s, self.timeout_s)
        return super().send(request, *args, **kwargs)


class BoundedRestCatalog(RestCatalog):
    """A ``RestCatalog`` whose requests time out after ``k2.request-timeout-s`` seconds (default 10)."""

    def _create_session(self) -> Session:
        session = super()._create_session()
        adapter = _DeadlineAdapter(float(self.properties.get(TIMEOUT_PROPERTY, DEFAULT_TIMEOUT_S)))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session
