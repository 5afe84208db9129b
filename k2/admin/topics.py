"""The Kafka topics K2 owns, and their idempotent creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry

from k2.admin.clients import ConnectErrors, client_conf, cluster_metadata
from k2.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like: name, partitions and topic-level configs."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The four topics of K2, sized and retained as the settings say."""
    rf = settings.replication_factor
    market = {"cleanup.policy": "delete", "retention.ms": str(settings.market_retention_ms)}
    return [
        TopicSpec(settings.trades_topic, settings.trades_partitions, rf, dict(market)),
        TopicSpec(settings.quotes_topic, settings.quotes_partitions, rf, dict(market)),
        TopicSpec(settings.reference_topic, settings.reference_partitions, rf, {"cleanup.policy": "compact"}),
        TopicSpec(
            settings.rejects_topic,
            settings.rejects_partitions,
            rf,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(settings.rejects_retention_ms),
                # A reject carries its source record whole, so the topic must take what a source may hold.
                "max.message.bytes": str(settings.max_message_bytes),
            },
        ),
    ]


def internal_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The worker's own topics: the changelog of every Faust table, and Faust's assignor topic.

    Faust would create them as the worker starts, but a topic created a moment before the
    group's first assignment can be missing from the broker's metadata then; the assignor
    skips it and that table never recovers. ``k2 init`` creates them beforehand.
    """
    from k2.app import create_app

    app = create_app(settings, CollectorRegistry())
    specs = [
        TopicSpec(
            table.changelog_topic.get_topic_name(),
            table.partitions or app.conf.topic_partitions,
            settings.replication_factor,
            {"cleanup.policy": "compact", "max.message.bytes": str(settings.max_message_bytes)},
        )
        for table in app.tables.values()
    ]
    specs.append(TopicSpec(f"{app.conf.id}-__assignor-__leader", 1, settings.replication_factor, {}))
    return specs


@dataclass
class TopicsReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def admin_client(settings: Settings, timeout_s: float = 10.0) -> AdminClient:
    """An AdminClient that has proven it can reach the broker within ``timeout_s``."""
    errors = ConnectErrors()
    admin = AdminClient(client_conf(settings, errors=errors))
    cluster_metadata(admin, settings, errors, timeout_s)
    return admin


def ensure_topics(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30.0) -> TopicsReport:
    """Create the topics that are missing; report, never alter, existing ones that differ.

    Changing partition counts or retention of a live topic is an operator's decision,
    so a mismatch is reported for them to act on rather than fixed behind their back.
    """
    report = TopicsReport()
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                report.created.append(name)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    report.existing.append(name)
                else:
                    raise
    for spec in specs:
        if spec.name in existing:
            report.existing.append(spec.name)
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                report.mismatches.append(f"{spec.name}: {have} partitions, settings say {spec.partitions}")
    report.mismatches.extend(_config_mismatches(admin, [s for s in specs if s.name in existing], timeout_s))
    return report


def _config_mismatches(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> list[str]:
    from confluent_kafka.admin import ConfigResource, ResourceType

    if not specs:
        return []
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    found = admin.describe_configs(resources, request_timeout=timeout_s)
    out: list[str] = []
    for spec, res in zip(specs, resources, strict=True):
        entries = found[res].result()
        for key, want in spec.config.items():
            have = entries[key].value if key in entries else None
            if have != want:
                out.append(f"{spec.name}: {key}={have}, settings say {want}")
    return out
