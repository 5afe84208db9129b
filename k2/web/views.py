"""K2's views under ``/k2/`` and ``/metrics``: thin wrappers that ask the pipeline, the lag watch and readiness.

==================  ====================================================================
``/metrics``        Prometheus exposition: faust's sensor and K2's metrics, one registry
``/k2/lag``         per source partition: end, committed, landed offsets and both lags,
                    read now; ``?format=text`` for a table
``/k2/partitions``  each source partition held: its phase (assigned, positioning, consuming,
                    revoking), how long, what it waits for, whether it is past its bound
``/k2/tables``      per Iceberg table: snapshot, commit time and age, rows, offsets,
                    rows buffered here (catalog read in a thread, cached 2 s)
``/k2/health``      liveness: 200 whenever the event loop answers
``/k2/ready``       readiness: 200 when every check passes, else 503 naming the failed
                    ones; answers within a second even when a dependency hangs
``/k2/instruments`` known instruments, unknown symbols and contradicting company ids seen
``/k2/overview``    what the operator page shows: lag, tables, rejects by reason, readiness
``/k2/``            the operator page: HTML with no external assets, refreshing itself
==================  ====================================================================

Every answer under ``/k2/`` is JSON (the text lag table and the page aside), errors included: an
unknown path is a 404, a bad query parameter a 400, a failure inside a view a 500 with
the exception's one-line summary (the traceback goes to the worker's log only). No view
changes state: reading ``/k2/lag`` does not move a gauge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import faust
from faust import web

from k2.lake.status import TableStatus, table_status
from k2.metrics import K2Metrics
from k2.observe.health import Readiness
from k2.observe.lag import format_lag_table, lag_payload
from k2.observe.probes import Cached
from k2.observe.tables import overview_payload, tables_payload
from k2.observe.watch import LagWatch
from k2.pipeline.service import Pipeline
from k2.reference.instruments import Instruments, InstrumentWatch, instruments_payload
from k2.web.base import K2View as BaseView
from k2.web.prometheus import install

__all__ = ["register_views"]

PREFIX = "/k2/"
TABLES_TTL_S = 2.0


def register_views(
    app: faust.App,
    pipeline: Pipeline,
    metrics: K2Metrics,
    instruments: Instruments,
    watch: InstrumentWatch,
    lag: LagWatch,
    ready: Readiness,
    redact: Callable[[str], str] = lambda text: text,
) -> None:
    """Serve ``/metrics`` and the ``/k2/`` views from ``app``'s web server, every answer through ``redact``."""
    blueprint = web.Blueprint("k2")

    class K2View(BaseView):
        def redact(self, text: str) -> str:
            return redact(text)

    async def statuses() -> list[TableStatus]:
        if not pipeline.lake_ready.is_set():
            raise RuntimeError(pipeline.lake_error or "the catalog is being loaded")
        return await asyncio.wait_for(
            asyncio.to_thread(lambda: table_status(pipeline.writer().catalog)), pipeline.settings.catalog_timeout_s
        )

    tables_cache = Cached(statuses, TABLES_TTL_S)

    @blueprint.route("/lag", name="lag")
    class LagView(K2View):
        """Consumer lag and lake lag per owned source partition."""

        params = {"format": ("json", "text")}

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            try:
                rows = await lag.read()
            except Exception as exc:
                return self.error(503, f"Kafka did not answer: {type(exc).__name__}: {exc}")
            if query.get("format") == "text":
                return self.text(format_lag_table(rows))
            return self.json(lag_payload(rows))

    @blueprint.route("/partitions", name="partitions")
    class PartitionsView(K2View):
        """Every source partition this worker holds: its phase, since when, and what it waits for."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            return self.json(partitions_payload(pipeline, time.monotonic()))

    @blueprint.route("/tables", name="tables")
    class TablesView(K2View):
        """What each Iceberg table holds, and what this worker still buffers for it."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            try:
                found = await tables_cache.get()
            except Exception as exc:
                return self.error(503, f"catalog unavailable: {type(exc).__name__}: {exc}")
            return self.json(tables_payload(found, pipeline.flusher.buffered_rows(), time.time()))

    @blueprint.route("/health", name="health")
    class HealthView(K2View):
        """Liveness: if this answers, the event loop turns."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            return self.json({"status": "alive", "worker_id": pipeline.worker_id})

    @blueprint.route("/ready", name="ready")
    class ReadyView(K2View):
        """Readiness, with every check and why it failed."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            status, body = await ready.answer()
            return self.json(body, status=status)

    @blueprint.route("/instruments", name="instruments")
    class InstrumentsView(K2View):
        """Known instruments; unknown symbols seen with their counts; company ids the reference data contradicts."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            return self.json(instruments_payload(instruments, watch))

    @blueprint.route("/overview", name="overview")
    class OverviewView(K2View):
        """Everything the operator page shows, in one read (each part as its own view gives it)."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            _, ready_body = await ready.answer()
            try:
                lag_body = lag_payload(await lag.read())
            except Exception as exc:
                lag_body = {"partitions": [], "error": f"Kafka did not answer: {type(exc).__name__}: {exc}"}
            try:
                found = tables_payload(await tables_cache.get(), pipeline.flusher.buffered_rows(), time.time())
            except Exception as exc:
                found = {"tables": [], "error": f"catalog unavailable: {type(exc).__name__}: {exc}"}
            rejects = metrics.rejects_by_reason()
            return self.json(overview_payload(pipeline.worker_id, ready_body, lag_body, found["tables"], rejects))

    page = resources.files("k2.web").joinpath("operator.html").read_text()

    @blueprint.route("/", name="operator")
    class OperatorPage(K2View):
        """The operator page: per partition lag, per table rows and commit age, rejects, readiness."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            return self.html(page)

    @blueprint.route("/{path:.*}", name="not_found")
    class NotFoundView(K2View):
        """Any other path under ``/k2/``: a JSON 404 listing what exists."""

        async def answer(self, query: Mapping[str, str], **kwargs: Any) -> web.Response:
            names = ("", "overview", "lag", "partitions", "tables", "health", "ready", "instruments")
            paths = [f"{PREFIX}{name}" for name in names]
            return self.error(404, f"no such view: {PREFIX}{kwargs.get('path', '')}", views=paths)

        async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
            # Unknown path first: its query string is not worth validating.
            return await self.answer({}, **kwargs)

    install(app, metrics.registry, redact)
    blueprint.register(app, url_prefix=PREFIX)


def partitions_payload(pipeline: Pipeline, now: float) -> dict[str, Any]:
    """The body of ``/k2/partitions``: the lifecycle of each held partition (see :mod:`k2.pipeline.lifecycle`)."""
    overdue = pipeline.overdue()
    stopped = pipeline.stopped()
    rows = []
    for tp, state in sorted(pipeline.held().items(), key=lambda item: (item[0].topic, item[0].partition)):
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "phase": state.phase.value,
                "generation": state.generation,
                "in_phase_s": round(now - state.since, 1),
                "since_assignment_s": round(now - state.assigned_at, 1),
                "waiting_for": state.waiting_for,
                "attempts": state.attempts,
                "overdue": overdue.get(tp),
                "stopped": stopped.get(tp),
            }
        )
    return {"generation": pipeline.lifecycle.generation, "partitions": rows}
