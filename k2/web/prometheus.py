"""``/metrics``: faust's own Prometheus sensor and K2's metrics, on one registry, in one exposition.

This is faust's ``setup_prometheus_sensors`` with two changes, both about names:

* a fixed prefix (``k2_faust``) instead of the app id, so dashboards and alerts do not
  change with the consumer group's name;
* faust's latency histograms observe *milliseconds* (``events_runtime_ms``,
  ``producer_send_latency``...). Prometheus wants base units, and ``promtool check
  metrics`` rejects the ``_ms`` name, so each is registered as ``<name>_seconds`` with
  second buckets and fed through :class:`MillisecondsHistogram`, which divides by 1000.

The monitor itself is faust's ``PrometheusMonitor``, unchanged, so ``/performance/``
(``web_metrics_enabled``) keeps working from the same monitor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust import web
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import AppT
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Histogram, generate_latest

__all__ = ["FAUST_PREFIX", "MillisecondsHistogram", "faust_metrics", "install"]

FAUST_PREFIX = "k2_faust"


class MillisecondsHistogram:
    """Takes faust's millisecond observations and records them in seconds."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def observe(self, amount_ms: float) -> None:
        self.histogram.observe(amount_ms / 1000.0)


def faust_metrics(registry: CollectorRegistry, prefix: str = FAUST_PREFIX) -> FaustMetrics:
    """faust's metric bundle on ``registry``, its millisecond histograms replaced by ``_seconds`` ones."""
    metrics = FaustMetrics.create(registry, prefix)
    replaced: dict[str, Any] = {}
    for field, metric in metrics._asdict().items():
        if not isinstance(metric, Histogram):
            continue
        registry.unregister(metric)
        (family,) = metric.describe()  # the public view of a metric's name and help text
        base = family.name.removesuffix("_ms")
        doc = family.documentation.replace(" in ms", "")
        replaced[field] = MillisecondsHistogram(Histogram(f"{base}_seconds", f"{doc} (seconds).", registry=registry))
    return metrics._replace(**replaced)


def install(
    app: AppT, registry: CollectorRegistry, redact: Callable[[str], str] = lambda text: text, pattern: str = "/metrics"
) -> None:
    """Make faust's ``PrometheusMonitor`` the monitor; serve ``registry`` at ``pattern``, through ``redact``."""
    app.monitor = PrometheusMonitor(metrics=faust_metrics(registry))

    @app.page(pattern, name="k2.metrics")
    class Metrics(web.View):
        """The Prometheus exposition of everything on K2's registry."""

        async def get(self, request: web.Request) -> web.Response:
            body = redact(generate_latest(registry).decode()).encode()
            # The text format generate_latest writes, understood by every Prometheus; aiohttp
            # refuses parameters in ``content_type``, so the header carries it.
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
