"""The base of K2's views under ``/k2/``: a validated query string and JSON answers, errors included."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, MutableMapping
from typing import Any, ClassVar

from faust import web
from faust.web.exceptions import WebError

from k2.web.query import parse_query

__all__ = ["K2View"]

log = logging.getLogger(__name__)


class K2View(web.View):
    """A GET view with a validated query string and JSON errors, its answers redacted."""

    #: Accepted query parameters and their accepted values.
    params: ClassVar[Mapping[str, Collection[str]]] = {}

    def redact(self, text: str) -> str:
        """What every JSON answer goes through before it leaves (see :mod:`k2.secrets`)."""
        return text

    def json(
        self,
        value: Any,
        *,
        content_type: str | None = None,
        status: int = 200,
        reason: str | None = None,
        headers: MutableMapping[str, str] | None = None,
    ) -> web.Response:
        body = self.redact(json.dumps(value, default=str))
        return self.bytes(
            body.encode(),
            content_type=content_type or "application/json",
            status=status,
            reason=reason,
            headers=headers,
        )

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        try:
            query = parse_query(request.query, self.params)
        except ValueError as exc:
            return self.error(400, str(exc))
        try:
            return await self.answer(query, **kwargs)
        except WebError:
            raise
        except Exception as exc:  # an answer, never a stack trace; the traceback is logged
            log.exception("%s failed", request.url)
            return self.error(500, f"{type(exc).__name__}: {exc}")

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        raise NotImplementedError
