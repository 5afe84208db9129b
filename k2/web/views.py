"""K2's views under ``/k2/`` and ``/metrics``: thin wrappers over :mod:`k2.observe`.

==================  ====================================================================
``/metrics``        Prometheus exposition: faust's sensor and K2's metrics, one registry
``/k2/lag``         per source partition: end, committed, landed offsets and both lags;
                    ``?format=text`` for an aligned table
``/k2/tables``      per Iceberg table: snapshot, commit time and age, rows, offsets,
                    rows buffered here (catalog read in a thread, cached 2 s)
``/k2/health``      liveness: 200 whenever the event loop answers
``/k2/ready``       readiness: 200 when partitions are assigned, buffer tables recovered,
                    catalog and registry reachable; else 503 naming the failed checks
``/k2/instruments`` known instruments, unknown symbols and contradicting company ids seen
                    (:mod:`k2.web.instruments`)
==================  ====================================================================

Every answer under ``/k2/`` is JSON (the text lag table aside), errors included: an
unknown path is a 404, a bad query parameter a 400, a failure inside a view a 500 with
the exception's one-line summary (the traceback goes to the worker's log only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from faust import web

from k2.agents.observe import current_lag, source_partitions
from k2.agents.wiring import metrics, runtime
from k2.app import app
from k2.catalog import describe_catalog
from k2.lake.status import TableStatus
from k2.observe.lag import format_lag_table, lag_payload
from k2.observe.probes import Cached, Check, assignment_check, probe, readiness, recovery_check
from k2.observe.tables import tables_payload
from k2.web import instruments
from k2.web.base import K2View
from k2.web.prometheus import install

__all__ = ["blueprint"]

log = logging.getLogger(__name__)

PREFIX = "/k2/"
PROBE_TIMEOUT_S = 5.0
PROBE_TTL_S = 5.0
TABLES_TTL_S = 2.0

blueprint = web.Blueprint("k2")


@blueprint.route("/lag", name="lag")
class LagView(K2View):
    """Consumer lag and lake lag per owned source partition."""

    params = {"format": ("json", "text")}

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        rows = await current_lag()
        if query.get("format") == "text":
            return self.text(format_lag_table(rows))
        return self.json(lag_payload(rows))


async def _table_statuses() -> list[TableStatus]:
    return await asyncio.to_thread(runtime.table_statuses)


_tables = Cached(_table_statuses, TABLES_TTL_S)


@blueprint.route("/tables", name="tables")
class TablesView(K2View):
    """What each Iceberg table holds, and what this worker still buffers for it."""

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        try:
            statuses = await _tables.get()
        except Exception as exc:
            return self.error(503, f"catalog unavailable: {type(exc).__name__}: {exc}")
        return self.json(tables_payload(statuses, runtime.flusher.buffered_rows(), time.time()))


@blueprint.route("/health", name="health")
class HealthView(K2View):
    """Liveness: if this answers, the event loop turns."""

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        return self.json({"status": "alive", "worker_id": runtime.worker_id})


async def _catalog() -> str:
    def call() -> str:
        catalog = runtime.writer().catalog
        namespaces = catalog.list_namespaces()
        return f"{describe_catalog(catalog)}: {len(namespaces)} namespace(s)"

    return await asyncio.to_thread(call)


async def _catalog_check() -> Check:
    return await probe("catalog", _catalog, PROBE_TIMEOUT_S)


async def _registry_check() -> Check:
    return await probe("registry", runtime.registry.ping, PROBE_TIMEOUT_S)


# Remote probes are cached while they pass; a failure is probed again on the next request.
_catalog_probe = Cached(_catalog_check, PROBE_TTL_S, keep=lambda c: c.ok)
_registry_probe = Cached(_registry_check, PROBE_TTL_S, keep=lambda c: c.ok)


async def _lake_check() -> Check:
    if not runtime.lake_ready:
        return Check("catalog", False, "tables not loaded yet (the worker is starting)")
    return await _catalog_probe.get()


@blueprint.route("/ready", name="ready")
class ReadyView(K2View):
    """Readiness, with every check and why it failed."""

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # faust's TableManager, not its protocol
        checks = [
            assignment_check(len(source_partitions())),
            recovery_check(
                rebalancing=bool(app.rebalancing),
                in_recovery=bool(getattr(app, "in_recovery", False)),
                completed=recovery.completed.is_set(),
                remaining=recovery.active_remaining_total(),
            ),
            *await asyncio.gather(_lake_check(), _registry_probe.get()),
        ]
        status, body = readiness(checks)
        return self.json(body, status=status)


@blueprint.route("/{path:.*}", name="not_found")
class NotFoundView(K2View):
    """Any other path under ``/k2/``: a JSON 404 listing what exists."""

    async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
        paths = [f"{PREFIX}{name}" for name in ("lag", "tables", "health", "ready", "instruments")]
        return self.error(404, f"no such view: {PREFIX}{kwargs.get('path', '')}", views=paths)

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        # Unknown path first: its query string is not worth validating.
        return await self.answer({}, **kwargs)


install(app, metrics.registry)
instruments.blueprint.register(app, url_prefix=PREFIX)  # before this blueprint's catch-all 404
blueprint.register(app, url_prefix=PREFIX)
