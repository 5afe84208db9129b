"""The Kafka topics K2 owns, and their idempotent creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry

from k2.admin.changelogs import changelog_topic_configs
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
            changelog_topic_configs(settings),
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
    return [
        f"{name}: {key}={have}, settings say {want}"
        for name, differences in _config_differences(admin, specs, timeout_s).items()
        for key, (have, want) in differences.items()
    ]


def _config_differences(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float
) -> dict[str, dict[str, tuple[str | None, str]]]:
    """Per existing topic, the configs of its spec it does not have: ``{key: (have, want)}``."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    if not specs:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    found = admin.describe_configs(resources, request_timeout=timeout_s)
    out: dict[str, dict[str, tuple[str | None, str]]] = {}
    for spec, res in zip(specs, resources, strict=True):
        entries = found[res].result()
        for key, want in spec.config.items():
            have = entries[key].value if key in entries else None
            if have != want:
                out.setdefault(spec.name, {})[key] = (have, want)
    return out


@dataclass
class ConfigAlignment:
    """What :func:`align_topic_configs` did: a line per topic re-configured, one per topic the broker refused to."""

    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def align_topic_configs(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30.0) -> ConfigAlignment:
    """Set the configs of existing topics that differ from their spec (missing topics are not touched).

    For the topics K2 alone writes and reads (its tables' changelogs): unlike the source topics,
    their settings are K2's to choose, and a deployment made by an older K2 gets the new ones on
    the next ``k2 init``. Only the differing keys are set (incrementalAlterConfigs); the topics'
    other configs are left as they are. A refusal (a managed Kafka's limits, a policy) is reported
    per topic with the broker's reason, not raised: K2 works with the topics as they are.
    """
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    existing = admin.list_topics(timeout=timeout_s).topics
    differences = _config_differences(admin, [s for s in specs if s.name in existing], timeout_s)
    report = ConfigAlignment()
    if not differences:
        return report
    resources = {
        name: ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, want, incremental_operation=AlterConfigOpType.SET) for key, (_, want) in keys.items()
            ],
        )
        for name, keys in sorted(differences.items())
    }
    futures = admin.incremental_alter_configs(list(resources.values()), request_timeout=timeout_s)
    for name, resource in resources.items():
        try:
            futures[resource].result()
        except KafkaException as exc:
            report.refused.append(f"{name}: {kafka_reason(exc)}")
            continue
        changes = ", ".join(f"{key} {have or '(unset)'} -> {want}" for key, (have, want) in differences[name].items())
        report.changed.append(f"{name}: {changes}")
    return report


def kafka_reason(exc: KafkaException) -> str:
    """What the broker said, in its words (``KafkaError.str()``), for a one-line message."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)
