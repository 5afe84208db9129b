"""``/k2/instruments``: the instruments the reference data knows, and the ticks that do not fit them.

Per worker: the known instruments are the same everywhere (a global table), the symbols
seen unknown or with a contradicting ``company_id`` are those of the partitions this
worker consumed since it started (their counts are also metrics, summed by Prometheus).
Registered under ``/k2/`` by :mod:`k2.web.views`, before its catch-all 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust import web

from k2.agents.market import instruments, watch
from k2.reference.instruments import instruments_payload
from k2.web.base import K2View

__all__ = ["InstrumentsView", "blueprint"]

blueprint = web.Blueprint("k2.instruments")


@blueprint.route("/instruments", name="instruments")
class InstrumentsView(K2View):
    """Known instruments; unknown symbols seen with their counts; company ids the reference data contradicts."""

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        return self.json(instruments_payload(instruments, watch))
