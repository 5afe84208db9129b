"""`k2 init` against the real stack: topics with their configs, schemas by id, tables; twice = no change."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from k2.admin.changelogs import changelog_topic_configs
from k2.admin.topics import TopicSpec, align_topic_configs
from tests.integration.k2env import K2Env

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def test_init_creates_everything_and_a_second_run_changes_nothing(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", K2_REJECTS_PARTITIONS="4")
    s = env.settings
    first = env.k2("init").stdout
    assert first.count(": created") == 11  # 4 topics + 7 tables (the redrives table with them)
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    assert {
        t: len(topics[t].partitions) for t in (s.trades_topic, s.quotes_topic, s.reference_topic, s.rejects_topic)
    } == {
        s.trades_topic: 6,
        s.quotes_topic: 6,
        s.reference_topic: 1,
        s.rejects_topic: 4,
    }
    resources = {t: ConfigResource(ResourceType.TOPIC, t) for t in (s.trades_topic, s.reference_topic, s.rejects_topic)}
    configs = {
        t: f.result() for t, f in zip(resources, admin.describe_configs(list(resources.values())).values(), strict=True)
    }
    assert configs[s.trades_topic]["retention.ms"].value == str(7 * DAY_MS)
    assert configs[s.reference_topic]["cleanup.policy"].value == "compact"
    assert configs[s.rejects_topic]["retention.ms"].value == str(30 * DAY_MS)

    # Every schema is registered under its topic's subject and fetchable by id, BACKWARD.
    for topic in s.source_topics:
        subject = f"{topic}-value"
        with urllib.request.urlopen(f"{s.schema_registry_url}/subjects/{subject}/versions/latest") as resp:
            latest = json.load(resp)
        with urllib.request.urlopen(f"{s.schema_registry_url}/schemas/ids/{latest['id']}") as resp:
            by_id = json.load(resp)
        assert json.loads(by_id["schema"])["namespace"] == "com.k2.market_data"
        with urllib.request.urlopen(f"{s.schema_registry_url}/config/{subject}") as resp:
            assert json.load(resp)["compatibilityLevel"] == "BACKWARD"

    catalog = env.catalog()
    metadata_before = {
        t: catalog.load_table(t).metadata_location
        for t in ("market_data.trades", "market_data.rejects", "market_data.sequence_gaps", "market_data.redrives")
    }
    second = env.k2("init").stdout
    assert ": created" not in second and "(registered)" not in second
    assert {t: catalog.load_table(t).metadata_location for t in metadata_before} == metadata_before


def test_init_with_kafka_down_says_what_to_do(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", K2_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    proc = env.k2("init", check=False, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr and "make stack-up" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_gives_existing_changelogs_the_compaction_settings(stack: Any, tmp_path: Path) -> None:
    """A deployment whose changelogs an older K2 (or faust) made with Kafka's defaults gets K2's settings on
    the next `k2 init`; the other configs are kept, and a second run has nothing left to change."""
    env = K2Env(stack, tmp_path, "sqlite")
    s = env.settings
    changelog = f"{s.app_id}-sequences-{s.trades_topic}-changelog"
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    old = {"cleanup.policy": "compact", "max.message.bytes": "1000000", "retention.bytes": "123456789"}
    admin.create_topics([NewTopic(changelog, s.trades_partitions, 1, config=old)])[changelog].result(30)

    first = env.k2("init", "--skip-schemas", "--skip-tables").stdout
    assert f"{changelog}: " in first and "segment.ms 604800000 -> " in first
    found = admin.describe_configs([ConfigResource(ResourceType.TOPIC, changelog)])
    have = {key: entry.value for key, entry in next(iter(found.values())).result().items()}
    wanted = changelog_topic_configs(s)
    assert {key: have[key] for key in wanted} == wanted
    assert have["retention.bytes"] == "123456789"  # what K2 does not set is left alone
    second = env.k2("init", "--skip-schemas", "--skip-tables").stdout
    assert " -> " not in second and "WARNING" not in second


def test_a_config_the_broker_refuses_is_named_not_a_traceback(stack: Any, tmp_path: Path) -> None:
    """The broker's own reason, in one line: for a topic it will not create (exit 2), and for a config it will
    not set on an existing topic (a warning; the topic is left as it is)."""
    env = K2Env(stack, tmp_path, "sqlite", K2_MAX_MESSAGE_BYTES=str(3 * 2**30))  # beyond a Java int
    proc = env.k2("init", "--skip-schemas", "--skip-tables", check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Kafka refused to create a topic" in proc.stderr and "max.message.bytes" in proc.stderr
    assert "Traceback" not in proc.stderr

    s = env.settings
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    name = f"{s.app_id}-refused"
    admin.create_topics([NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})])[name].result(30)
    aligned = align_topic_configs(admin, [TopicSpec(name, 1, 1, {"segment.ms": "-5"})])
    assert aligned.changed == [] and len(aligned.refused) == 1
    assert aligned.refused[0].startswith(f"{name}: ") and "segment.ms" in aligned.refused[0]
    admin.delete_topics([name])
