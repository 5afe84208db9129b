"""``k2 audit``: prove K2's law from Kafka and the lake alone.

Every offset of the three source topics lands exactly once in exactly one table: a row
of the topic's own table (``market_data.trades``, ``market_data.quotes``,
``reference_data.company_versions``) or of ``market_data.rejects``. The audit reads only
the lineage columns and the offset marks of each table, Kafka's log bounds, and the few
Kafka records around the holes it finds; it trusts no worker, metric or log.

Layout: :mod:`~k2.audit.ranges` (offset sets as ranges), :mod:`~k2.audit.verdict` (one
partition), :mod:`~k2.audit.companies` (the upserted table against its history),
:mod:`~k2.audit.judge` (the whole lake), :mod:`~k2.audit.report` (the answer and its
rendering) are pure; :mod:`~k2.audit.lake` and :mod:`~k2.audit.kafka` read;
:mod:`~k2.audit.runner` puts them together.

From a test::

    from k2.audit import audit
    report = audit(settings, catalog, settle_s=5)
    assert report.ok, report.render()
"""

from k2.audit.report import AuditReport
from k2.audit.runner import audit

__all__ = ["AuditReport", "audit"]
