"""The three data contracts shipped with K2 (``*.avsc`` beside this module) and where they live.

Each contract is registered under the Confluent *topic-name strategy*: subject
``<topic>-value``. The topic comes from :class:`~k2.settings.Settings` (so tests and
deployments can rename topics), hence a contract names the *setting*, not the topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from k2.avro.codec import ParsedSchema, parse_schema
from k2.settings import Settings

__all__ = ["CONTRACTS", "Contract", "contract_for_topic", "subject_for_topic"]


@dataclass(frozen=True)
class Contract:
    """One Avro contract: its schema text (as registered) and the settings field naming its topic."""

    name: str
    topic_setting: str
    schema_str: str
    parsed: ParsedSchema  # from k2.avro.codec.parse_schema: timestamps read as int millis

    def topic(self, settings: Settings) -> str:
        """The Kafka topic this contract's records are written to, per the given settings."""
        topic: str = getattr(settings, self.topic_setting)
        return topic

    def subject(self, settings: Settings) -> str:
        """The registry subject of this contract's value schema (topic-name strategy)."""
        return subject_for_topic(self.topic(settings))


def subject_for_topic(topic: str) -> str:
    """Registry subject of a topic's values under the topic-name strategy: ``<topic>-value``."""
    return f"{topic}-value"


def _load(name: str, topic_setting: str) -> Contract:
    # Stripped as confluent-kafka's AvroSerializer strips it, so `k2 init` registers the very
    # string the serializer later looks up (registries that compare text verbatim agree).
    schema_str = resources.files("k2.avro").joinpath(f"{name}.avsc").read_text(encoding="utf-8").strip()
    return Contract(name=name, topic_setting=topic_setting, schema_str=schema_str, parsed=parse_schema(schema_str))


#: name -> contract; read once at import (three small files, parsed in well under a millisecond each).
CONTRACTS: Mapping[str, Contract] = MappingProxyType(
    {
        "trade": _load("trade", "trades_topic"),
        "quote": _load("quote", "quotes_topic"),
        "reference_data": _load("reference_data", "reference_topic"),
    }
)


def contract_for_topic(topic: str, settings: Settings) -> Contract | None:
    """The contract whose topic (under ``settings``) is ``topic``, or None for a topic K2 does not own."""
    for contract in CONTRACTS.values():
        if contract.topic(settings) == topic:
            return contract
    return None
