"""The faust transport K2 runs on: faust's aiokafka transport with :class:`~k2.kafka.consumer.K2Consumer`.

Registered under the URL scheme ``k2`` through faust's own plugin point (the
``faust.transports`` entry point in ``pyproject.toml``), so the app is configured with
``broker="k2://host:port"`` and faust builds this transport like any other.
"""

from __future__ import annotations

from typing import ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ConsumerT

from k2.kafka.consumer import K2Consumer

__all__ = ["SCHEME", "Transport"]

SCHEME = "k2"


class Transport(faust_aiokafka.Transport):
    """aiokafka, with batch delivery and sink-owned commit offsets for K2's source topics."""

    Consumer: ClassVar[type[ConsumerT]] = K2Consumer
