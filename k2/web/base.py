"""The base of K2's views under ``/k2/``: a validated query string and JSON answers, errors included."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from faust import web
from faust.web.exceptions import WebError

from k2.web.query import parse_query

__all__ = ["K2View"]

log = logging.getLogger(__name__)


class K2View(web.View):
    """A GET view with a validated query string and JSON errors."""

    #: Accepted query parameters and their accepted values.
    params: ClassVar[Mapping[str, Collection[str]]] = {}

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
