"""``k2 status``: the consumer group's view of every source partition, and the partitions nobody lands."""

from __future__ import annotations

import argparse
import json

from k2.cli.audit import _seconds
from k2.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="the group's view: per source partition its end, owner, committed offset, lake mark and lags",
        description=(
            "Per source partition: its end (Kafka's last stable offset; and how many offsets of open "
            "transactions lie above it), the consumer group's committed offset, the lake's mark, the group "
            "member that owns it, consumer lag and lake lag, each counted from the first record Kafka holds "
            "(control markers and aborted records are no lag). Partitions with records waiting for the lake "
            "and no owner are named first, with how long their oldest waiting record has waited (its Kafka "
            "timestamp). Exit 0 when every partition with records waiting is owned, 1 when some is not (an "
            "empty group while records wait included), 2 when it cannot be checked."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the whole view as JSON")
    p.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="timeout of each Kafka call (default 10)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from k2.admin.group import GroupAdmin, read_group_status
    from k2.audit.kafka import KafkaLog
    from k2.catalog import describe_catalog, load_k2_catalog
    from k2.lake.status import lake_marks, table_status

    settings = get_settings()
    catalog = load_k2_catalog(settings)
    marks = lake_marks(table_status(catalog))
    with KafkaLog(settings, timeout_s=args.timeout) as log:
        admin = GroupAdmin(settings, timeout_s=args.timeout)
        status = read_group_status(admin, log.first_records, settings.source_topics, marks, strict=True)
    if args.json:
        print(json.dumps({"catalog": describe_catalog(catalog), **status.to_dict()}, indent=2))
    else:
        print(f"catalog  {describe_catalog(catalog)}\n")
        print(status.render())
    return status.exit_code
