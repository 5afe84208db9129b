"""The law every end-to-end test checks, shared by the integration and fault tests: ``k2 audit --values``.

Every record of the three source topics (read ``read_committed``) lands exactly once in exactly one of
``market_data.trades``, ``market_data.quotes``, ``reference_data.company_versions`` or
``market_data.rejects``; ``reference_data.companies`` holds the latest version of each
company; no gap row of ``market_data.sequence_gaps`` lands twice. And every row equals
its source record in Kafka, field by field; every reject keeps its record's bytes.
Checked by the audit, from Kafka and the lake alone (:mod:`k2.audit`), never from the
worker's own counters.
"""

from __future__ import annotations

from k2.audit import audit
from k2.audit.values import audit_values
from tests.integration.k2env import K2Env

__all__ = ["assert_law"]


def assert_law(env: K2Env, settle_s: float = 0.0, *, to_end: bool = True) -> None:
    """Fail with the audit's own report (missing and doubled offsets, differing values, as ranges) unless
    the law holds and every row equals its source record.

    Judged to the end (``k2 audit --to-end``): the callers audit a flow that has ended, so every record
    Kafka holds must have landed, whatever the lake's marks say. ``to_end=False`` for a lake still moving.
    """
    report = audit(env.settings, env.catalog(), settle_s=settle_s, to_end=to_end)
    assert report.ok, report.render()
    values = audit_values(env.settings, env.catalog())
    assert values.ok, values.render()
