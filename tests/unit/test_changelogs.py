"""The changelog topics' configs: one function, used by every table faust creates and by ``k2 init``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from k2.admin.changelogs import SEGMENT_MS, TOMBSTONE_RETENTION_MS, changelog_topic_configs
from k2.admin.topics import internal_topic_specs
from k2.app import create_app
from k2.settings import Settings


def test_every_table_asks_faust_for_the_changelog_configs() -> None:
    """A table declared without them would keep Kafka's defaults (a 7-day active segment never compacted):
    every buffer, sequence and reference table must create its changelog with K2's configs."""
    settings = Settings(max_message_bytes=4_000_000)
    app = create_app(settings, CollectorRegistry())
    wanted = changelog_topic_configs(settings)
    assert wanted["max.message.bytes"] == "4000000" and wanted["cleanup.policy"] == "compact"
    configs = {table.changelog_topic.get_topic_name(): table.changelog_topic.config for table in app.tables.values()}
    assert len(configs) == 6  # buffers of the three sources, sequences of trades and quotes, reference data
    assert {name: config for name, config in configs.items() if config != wanted} == {}


def test_k2_init_creates_the_changelogs_with_the_same_configs() -> None:
    settings = Settings(app_id="k2-unit")
    specs = {spec.name: spec.config for spec in internal_topic_specs(settings)}
    changelogs = {name: config for name, config in specs.items() if name.endswith("-changelog")}
    assert len(changelogs) == 6
    assert all(config == changelog_topic_configs(settings) for config in changelogs.values())
    assert specs["k2-unit-__assignor-__leader"] == {}  # faust's own topic keeps the broker's defaults


def test_compaction_settings_keep_a_restore_short() -> None:
    """The active segment is never compacted: it must roll within seconds, and a rolled segment be cleaned
    without waiting for half the log to be dirty; tombstones kept for seconds, not Kafka's day."""
    configs = changelog_topic_configs(Settings())
    assert int(configs["segment.ms"]) == SEGMENT_MS <= 60_000
    assert int(configs["max.compaction.lag.ms"]) <= int(configs["segment.ms"])
    assert float(configs["min.cleanable.dirty.ratio"]) < 0.5
    assert 15_000 <= int(configs["delete.retention.ms"]) == TOMBSTONE_RETENTION_MS <= 5 * 60_000
