"""``k2 rejects list`` and ``k2 rejects replay``: what was rejected and why, and a second life for it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from k2.settings import Settings, get_settings

_REPLAY = """\
Send the chosen rejects back to their source topic, to the partition they came from, with their
original key, value and headers and a header k2.redrive.from naming the original position. Do it
once the cause is fixed (a schema registered, a rule relaxed): what is still wrong is rejected again.

Without --yes nothing is sent: it prints what would be. Each reject is sent at most once, even if
a run dies half way: market_data.redrives links every original position to its new one, and the
next run completes a run that died before recording its links. A second run of the same
selection sends nothing. The reject rows stay as history; k2 audit counts the new offsets where
they land."""


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r} (e.g. 2026-12-01T09:00)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reason", action="append", metavar="R", help="only this reason (repeatable), e.g. unknown_schema_id"
    )
    p.add_argument("--topic", metavar="T", help="only rejects of this source topic")
    p.add_argument("--since", type=_instant, metavar="TIME", help="only rejects made at or after TIME (UTC if no zone)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rejects", help="list rejects, or send them back to their source (redrive)")
    sub = p.add_subparsers(dest="rejects_command", metavar="{list,replay}")
    sub.required = True
    listing = sub.add_parser(
        "list",
        help="what was rejected and why, from market_data.rejects",
        description="What was rejected and why, from market_data.rejects, oldest position first.",
    )
    _selection_args(listing)
    listing.add_argument("-n", "--limit", type=int, default=50, help="rows to print at most (default 50; 0: all)")
    listing.set_defaults(func=run_list)
    replay = sub.add_parser(
        "replay",
        help="send chosen rejects back to their source topic (dry run unless --yes)",
        description=_REPLAY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _selection_args(replay)
    replay.add_argument("--yes", action="store_true", help="send them (without it: only say what would be sent)")
    replay.set_defaults(func=run_replay)


def _selection(args: argparse.Namespace) -> Any:
    from k2.lake.redrive import Selection

    return Selection(tuple(args.reason or ()), args.topic, args.since)


def run_list(args: argparse.Namespace) -> int:
    from k2.catalog import load_k2_catalog
    from k2.cli.query import aligned
    from k2.lake.redrive import linked, read_rejects

    catalog = load_k2_catalog(get_settings())
    rows = read_rejects(catalog, _selection(args)).to_pylist()
    links = linked(catalog)
    shown = rows if args.limit <= 0 else rows[: args.limit]
    table = []
    for r in shown:
        to = links.get((r["source_topic"], r["source_partition"], r["source_offset"]))
        detail = r["detail"] or ""
        table.append(
            {
                "topic": r["source_topic"],
                "partition": r["source_partition"],
                "offset": r["source_offset"],
                "reason": r["reason"],
                "rejected at": r["rejected_at"].replace(microsecond=0),
                "redriven to": "" if to is None else f"{to[0]}/{to[1]}",
                "detail": detail if len(detail) <= 80 else detail[:77] + "...",
            }
        )
    if table:
        print(aligned(table, list(table[0])))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
    more = f", {len(rows) - len(shown)} not shown (--limit 0 shows all)" if len(shown) < len(rows) else ""
    print(f"{len(rows)} reject(s){': ' + by_reason if by_reason else ''}{more}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from k2.catalog import load_k2_catalog
    from k2.lake.redrive import redrive
    from k2.lake.schemas import REDRIVES, TABLES
    from k2.lake.tables import ensure_table

    settings = get_settings()
    catalog = load_k2_catalog(settings)
    ensure_table(catalog, TABLES[REDRIVES])
    kafka = _Kafka(settings) if args.yes else None
    try:
        result = redrive(
            catalog,
            _selection(args),
            send=args.yes,
            produce=kafka.produce if kafka else None,
            flush=kafka.flush if kafka else lambda: None,
            end_offsets=kafka.end_offsets if kafka else None,
            read_headers=kafka.read_headers if kafka else None,
        )
    finally:
        if kafka is not None:
            kafka.close()
    for (topic, reason), n in sorted(result.by_topic_reason.items()):
        print(f"{topic}: {n} {reason}")
    if result.recovered:
        print(f"a run that had died had sent {result.recovered} reject(s): their links are recorded now")
    skipped = f"; {result.already} sent by an earlier run, not again" if result.already else ""
    if args.yes:
        print(f"{result.sent} of {result.selected} selected reject(s) sent again{skipped}")
    else:
        todo = result.selected - result.already
        print(f"{todo} of {result.selected} selected reject(s) would be sent{skipped}; nothing sent: add --yes to send")
    return 0


class _Kafka:
    """The Kafka side of a redrive: an idempotent producer, end offsets, and a reader of headers."""

    def __init__(self, settings: Settings) -> None:
        from k2.replay.producer import check_kafka, make_producer

        self.settings = settings
        check_kafka(settings)
        self.producer = make_producer(settings)

    def produce(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        delivered: dict[str, Any] = {}

        def on_delivery(err: Any, msg: Any) -> None:
            delivered["error"], delivered["at"] = err, None if err else (msg.partition(), msg.offset())

        pairs = cast(list[tuple[str, str | bytes | None]], headers)
        self.producer.produce(topic, value=value, key=key, partition=partition, headers=pairs, on_delivery=on_delivery)
        self.producer.poll(0)

        def result() -> tuple[int, int]:
            if delivered.get("at") is None:
                raise RuntimeError(
                    f"a redriven record to {topic}/{partition} was not delivered: {delivered.get('error')}"
                )
            at: tuple[int, int] = delivered["at"]
            return at

        return result

    def flush(self) -> None:
        remaining = self.producer.flush(60)
        if remaining:
            raise RuntimeError(f"{remaining} redriven record(s) not delivered within 60 s")

    def end_offsets(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from k2.admin.watermarks import end_offsets

        ends = end_offsets(self.settings, sorted({t for t, _ in partitions}))
        return {tp: ends[tp] for tp in partitions if tp in ends}

    def read_headers(
        self, starts: Mapping[tuple[str, int], int]
    ) -> Iterator[tuple[str, int, int, list[tuple[str, bytes]]]]:
        from confluent_kafka import Consumer, TopicPartition

        from k2.admin.clients import client_conf

        ends = self.end_offsets(list(starts))
        reader: dict[str, Any] = {"group.id": "k2-redrive-recovery", "enable.auto.commit": False}
        consumer = Consumer(client_conf(self.settings, **reader))
        try:
            wanted = {tp: (start, ends.get(tp, start)) for tp, start in starts.items() if ends.get(tp, start) > start}
            consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in wanted.items()])
            left = set(wanted)
            while left:
                msg = consumer.poll(10)
                if msg is None:
                    raise RuntimeError(f"reading {sorted(left)} for an unfinished redrive timed out")
                if msg.error():
                    continue
                topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
                yield topic, partition, offset, cast(list[tuple[str, bytes]], list(msg.headers() or []))
                if offset + 1 >= wanted[(topic, partition)][1]:
                    left.discard((topic, partition))
        finally:
            consumer.close()

    def close(self) -> None:
        self.producer.flush(10)
