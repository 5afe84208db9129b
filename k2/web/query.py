"""Query-string validation for K2's views. Pure: a bad parameter is a ``ValueError`` the view turns into a 400."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["parse_query"]


def parse_query(query: Any, allowed: Mapping[str, Collection[str]]) -> dict[str, str]:
    """The query parameters as a dict, checked against ``allowed`` (name -> accepted values).

    ``query`` is a multi-dict (aiohttp's ``request.query``) or a plain mapping.

    Raises:
        ValueError: an unknown parameter, a repeated one, or a value not accepted; the
            message says which and what is accepted.
    """
    items = list(query.items())
    out: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"unknown query parameter {name!r} (accepted: {known})")
        if name in out:
            raise ValueError(f"query parameter {name!r} given more than once")
        if value not in allowed[name]:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(sorted(allowed[name]))}")
        out[name] = value
    return out
