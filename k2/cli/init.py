"""``k2 init``: topics, schemas and Iceberg tables, created once, idempotently."""

from __future__ import annotations

import argparse
import functools

from k2.errors import K2Error, RegistryUnavailable, ServiceUnavailable, describe, is_unavailable
from k2.settings import Settings, get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init",
        help="create topics, register schemas, create Iceberg tables (idempotent)",
        description=(
            "Create K2's Kafka topics, register the Avro contracts in the schema registry "
            "(topic-name strategy, BACKWARD compatibility) and create the Iceberg namespaces "
            "and tables. Safe to run again: what exists is left as it is, and differences "
            "from the settings are reported, not altered; only the changelog topics of the "
            "worker's tables (K2's own) are set to K2's compaction settings."
        ),
    )
    p.add_argument("--skip-topics", action="store_true", help="do not touch Kafka topics")
    p.add_argument("--skip-schemas", action="store_true", help="do not touch the schema registry")
    p.add_argument("--skip-tables", action="store_true", help="do not touch the Iceberg catalog")
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait out a catalog that does not answer (timeouts, refused connections) before giving up "
        "(default 120)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    warnings = 0
    if not args.skip_topics:
        from confluent_kafka import KafkaException

        from k2.admin.topics import (
            admin_client,
            align_topic_configs,
            ensure_topics,
            internal_topic_specs,
            kafka_reason,
            topic_specs,
        )

        admin = admin_client(settings)
        specs = internal_topic_specs(settings)
        try:
            report = ensure_topics(admin, topic_specs(settings))
            internal = ensure_topics(admin, specs)
        except KafkaException as exc:  # e.g. a managed Kafka refusing a topic config: its reason, in one line
            raise K2Error(f"Kafka refused to create a topic: {kafka_reason(exc)}") from exc
        print(
            f"topic    {len(internal.created)} internal topic(s) of the worker created, {len(internal.existing)} exist"
        )
        # The changelogs are K2's own: an existing one gets the settings that keep a restore short.
        aligned = align_topic_configs(admin, [s for s in specs if s.name in internal.existing])
        for line in aligned.changed:
            print(f"topic    {line}")
        for line in aligned.refused:
            print(f"topic    WARNING {line} (left unchanged: a new owner of a partition restores more)")
        for name in report.created:
            print(f"topic    {name}: created")
        for name in report.existing:
            print(f"topic    {name}: exists")
        for name, count in changelogs_grown(settings).items():
            print(f"topic    {name}: grown to {count} partitions, as its source topic")
        for line in report.mismatches:
            print(f"topic    WARNING {line} (left unchanged)")
        warnings += len(report.mismatches) + len(aligned.refused)
    if not args.skip_schemas:
        from k2.avro.registry import register_contracts, registry_client

        try:
            registrations = register_contracts(registry_client(settings), settings)
        except RegistryUnavailable as exc:
            raise ServiceUnavailable(
                f"the schema registry at {settings.schema_registry_url} does not answer ({exc}): is the stack up "
                "(`make stack-up`)? Or set K2_SCHEMA_REGISTRY_URL."
            ) from exc
        for subject, schema_id, status in registrations:
            print(f"schema   {subject}: id {schema_id} ({status})")
    if not args.skip_tables:
        from k2.catalog import describe_catalog, load_k2_catalog
        from k2.lake.schemas import TABLES
        from k2.lake.tables import ensure_table
        from k2.retry import wait_out

        catalog = load_k2_catalog(settings)
        for name, table_def in TABLES.items():
            try:
                # Idempotent: a create that timed out but landed is found by the next attempt.
                _, created = wait_out(
                    functools.partial(ensure_table, catalog, table_def), what=f"table {name}", give_up_after_s=args.wait
                )
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                raise ServiceUnavailable(
                    f"table {name}: the catalog did not answer within {args.wait:g}s ({describe(exc)}); is it up "
                    f"(`make stack-up`)? Run k2 init again, or give it longer with --wait."
                ) from exc
            print(f"table    {name}: {'created' if created else 'exists'}")
        print(f"catalog  {describe_catalog(catalog)}")
    if warnings:
        print(f"init     done with {warnings} warning(s): K2 works with the topics as they are.")
    return 0


def changelogs_grown(settings: Settings) -> dict[str, int]:
    """Grow the worker's changelog topics to their source topics' partition counts (see :mod:`k2.admin.growth`)."""
    from prometheus_client import CollectorRegistry

    from k2.admin.growth import ChangelogGrowth
    from k2.app import create_app

    pipeline = create_app(settings, CollectorRegistry()).pipeline
    assert pipeline is not None
    return ChangelogGrowth(settings, pipeline.table_topics).check()
