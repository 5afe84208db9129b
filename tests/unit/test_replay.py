"""`k2 replay` without a broker: folder loading, bad input, and the send loop with a fake producer."""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from k2.avro.codec import decode, split_frame
from k2.avro.schemas import CONTRACTS
from k2.cli import replay as replay_cli
from k2.errors import ReplayInputError, ServiceUnavailable
from k2.replay.asx_csv import Quote, Trade
from k2.replay.feed import plan_faults
from k2.replay.producer import (
    Replayer,
    ReplayReport,
    check_kafka,
    load_source,
    make_serializers,
    producer_config,
)
from k2.settings import Settings, get_settings

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SAMPLE_TRADES = 11 + 2000 + 232
SAMPLE_QUOTES = 60 + 2000 + 549


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_load_sample() -> None:
    source = load_source(SAMPLE)
    assert [r.symbol for r in source.reference] == ["MWR", "BHP", "DVN", "RIO"]
    assert sum(isinstance(e, Trade) for e in source.events) == SAMPLE_TRADES
    assert sum(isinstance(e, Quote) for e in source.events) == SAMPLE_QUOTES
    times = [e.exchange_timestamp for e in source.events]
    assert times == sorted(times)
    assert source.span_ms == times[-1] - times[0]
    assert source.malformed == []
    assert {e.company_id for e in source.events if e.symbol == "BHP"} == {7078}


def test_symbols_filter() -> None:
    source = load_source(SAMPLE, ["DVN", "MWR"])
    assert [r.symbol for r in source.reference] == ["DVN", "MWR"]
    assert {e.symbol for e in source.events} == {"DVN", "MWR"}
    assert len(source.events) == 11 + 60 + 232 + 549


def test_unknown_symbol() -> None:
    with pytest.raises(ReplayInputError, match=r"unknown symbol.*XYZ.*lists BHP, DVN, MWR, RIO"):
        load_source(SAMPLE, ["BHP", "XYZ"])


def test_missing_dir_and_layout(tmp_path: Path) -> None:
    with pytest.raises(ReplayInputError, match="no such directory"):
        load_source(tmp_path / "nope")
    (tmp_path / "trades").mkdir()
    with pytest.raises(ReplayInputError, match=r"missing reference-data/company_info.csv, quotes"):
        load_source(tmp_path)


def copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root)
    return root


def test_tick_file_of_unknown_company(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    shutil.copy(root / "trades" / "3153.csv", root / "trades" / "1234.csv")
    with pytest.raises(ReplayInputError, match="company_id 1234 is not in"):
        load_source(root)


def test_badly_named_tick_file(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    (root / "quotes" / "bhp.csv").write_text("")
    with pytest.raises(ReplayInputError, match=r"not named <company_id>\.csv"):
        load_source(root)


def test_malformed_lines_are_collected_with_paths(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    with (root / "trades" / "3153.csv").open("a", newline="") as f:
        f.write("03/14/2014,16:00:00.000,1.1234567,5,0,,\r\n")
    source = load_source(root)
    assert [str(m) for m in source.malformed] == [
        f"{root}/trades/3153.csv:12: price '1.1234567' has more than 6 decimal places"
    ]


def test_producer_config_is_idempotent_and_bounded() -> None:
    conf = producer_config(Settings())
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["compression.type"] in ("lz4", "zstd")
    assert conf["message.timeout.ms"] <= 120_000


def test_check_kafka_unreachable_is_bounded_and_clear() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    replay_cli.KAFKA_LOG.setLevel("CRITICAL")
    with pytest.raises(ServiceUnavailable, match=r"cannot reach Kafka at 127.0.0.1:9\b.*is the stack up\?"):
        check_kafka(settings, timeout_s=1.0)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="k2")
    replay_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["replay", *argv])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def test_cli_missing_dir_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(tmp_path / "nope")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("k2 replay: ") and "no such directory" in err


def test_cli_unknown_symbol_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(SAMPLE), "--symbols", "bhp,ZZZ") == 2
    assert "unknown symbol(s) ZZZ" in capsys.readouterr().err


def test_cli_kafka_unreachable_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("K2_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setattr(replay_cli, "KAFKA_CHECK_TIMEOUT_S", 1.0)
    assert run_cli(str(SAMPLE), "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("k2 replay: cannot reach Kafka at 127.0.0.1:9 (last error: ") and err.count("\n") == 1
    assert "Connection refused" in err and "is the stack up? Run `make stack-up`" in err


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--loop", "0"], ["--symbols", ","]])
def test_cli_rejects_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(str(SAMPLE), *argv)
    assert info.value.code == 2


class FakeProducer:
    """Just enough of confluent_kafka.Producer: records sends, reports delivery on poll/flush."""

    def __init__(self, fail_topic: str | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self._pending: list[tuple[Callable[..., None], Any]] = []
        self.fail_topic = fail_topic

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable[..., None]) -> None:
        self.sent.append((topic, key, value))
        self._pending.append((on_delivery, topic))

    def poll(self, timeout: float = 0) -> int:
        from confluent_kafka import KafkaError

        class Msg:
            def __init__(self, topic: str) -> None:
                self._topic = topic

            def topic(self) -> str:
                return self._topic

        for callback, topic in self._pending:
            err = KafkaError(KafkaError._MSG_TIMED_OUT) if topic == self.fail_topic else None
            callback(err, Msg(topic))
        n, self._pending = len(self._pending), []
        return n

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def registered_client(settings: Settings) -> SchemaRegistryClient:
    client = SchemaRegistryClient.new_client({"url": "mock://k2-replay-tests"})
    for contract in CONTRACTS.values():
        client.register_schema(contract.subject(settings), Schema(contract.schema_str, "AVRO"))
    return client


def test_replayer_sends_keys_topics_and_loops() -> None:
    settings = Settings()
    client = registered_client(settings)
    producer = FakeProducer()
    source = load_source(SAMPLE, ["DVN", "MWR"])
    replayer = Replayer(producer, make_serializers(client), settings, now_ms=lambda: 42)  # type: ignore[arg-type]
    report = replayer.run(source, loops=2, progress=False)

    n = len(source.events)
    assert report.delivered == {
        "market.reference_data": 2,
        "market.trades.raw": 2 * (11 + 232),
        "market.quotes.raw": 2 * (60 + 549),
    }
    assert report.total_failed == 0
    assert len(producer.sent) == 2 + 2 * n
    ref_topic, ref_key, ref_value = producer.sent[0]
    assert (ref_topic, ref_key) == ("market.reference_data", b"7181")
    assert decode(split_frame(ref_value)[1], CONTRACTS["reference_data"].parsed)["symbol"] == "DVN"

    decoded = []
    for topic, key, value in producer.sent[2:]:
        name = "trade" if topic == "market.trades.raw" else "quote"
        record = decode(split_frame(value)[1], CONTRACTS[name].parsed)
        assert key == record["symbol"].encode()
        assert record["ingestion_timestamp"] == 42
        decoded.append((name, record))
    times = [r["exchange_timestamp"] for _, r in decoded]
    assert times == sorted(times)
    assert min(times[n:]) == max(times[:n]) + 1
    dvn_trades = [r["sequence_number"] for name, r in decoded if name == "trade" and r["symbol"] == "DVN"]
    assert dvn_trades == list(range(1, 2 * 232 + 1))


def test_replayer_counts_delivery_failures() -> None:
    settings = Settings()
    producer = FakeProducer(fail_topic="market.quotes.raw")
    source = load_source(SAMPLE, ["MWR"])
    replayer = Replayer(producer, make_serializers(registered_client(settings)), settings)  # type: ignore[arg-type]
    report = replayer.run(source, progress=False)
    assert report.failed == {"market.quotes.raw": 60}
    assert report.delivered["market.trades.raw"] == 11
    assert report.errors[0].startswith("market.quotes.raw: ")
    text = replay_cli.format_report(report, settings)
    assert "market.quotes.raw: 0 delivered, 60 FAILED" in text
    assert "malformed lines: 0" in text


def test_format_report_lists_malformed_lines() -> None:
    from k2.replay.asx_csv import MalformedLine

    report = ReplayReport(malformed=[MalformedLine("d/trades/1.csv", 7, "empty line")], elapsed_s=2.0)
    report.delivered["market.trades.raw"] = 10
    text = replay_cli.format_report(report, Settings())
    assert "  d/trades/1.csv:7: empty line" in text
    assert "10 records in 2.00 s (5 records/s), 0 failed" in text


def test_replayer_injects_gaps_and_duplicates_and_reports_them() -> None:
    settings = Settings()
    producer = FakeProducer()
    source = load_source(SAMPLE, ["DVN"])
    faults = plan_faults([(type(e), e.symbol) for e in source.events], 1, gaps=3, duplicates=2, seed=5)
    clock = iter(range(10**6))
    replayer = Replayer(producer, make_serializers(registered_client(settings)), settings, now_ms=lambda: next(clock))  # type: ignore[arg-type]
    report = replayer.run(source, progress=False, faults=faults)
    assert report.total_delivered == 1 + len(source.events) - 3 + 2
    payload = replay_cli.injected_payload(report.injected, settings, 5)
    assert payload["seed"] == 5 and len(payload["gaps"]) == 3 and len(payload["duplicates"]) == 2
    sent: Counter[tuple[str, int]] = Counter()
    ingestion: dict[tuple[str, int], set[int]] = {}
    for topic, _, value in producer.sent[1:]:
        name = "trade" if topic == "market.trades.raw" else "quote"
        record = decode(split_frame(value)[1], CONTRACTS[name].parsed)
        sent[(topic, record["sequence_number"])] += 1
        ingestion.setdefault((topic, record["sequence_number"]), set()).add(record["ingestion_timestamp"])
    for gap in payload["gaps"]:
        assert sent[(gap["topic"], gap["expected"])] == 0 and sent[(gap["topic"], gap["received"])] == 1
    for dup in payload["duplicates"]:
        key = (dup["topic"], dup["sequence_number"])
        assert sent[key] == 2 and len(ingestion[key]) == 2  # re-sent later: a new ingestion time
    text = replay_cli.format_report(report, settings)
    assert "injected: 3 gap(s), 2 duplicate(s)" in text


def test_cli_refuses_more_faults_than_the_feed_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(SAMPLE), "--symbols", "MWR", "--inject-gaps", "50", "--no-progress") == 2
    assert "cannot place 50 gaps" in capsys.readouterr().err


def test_loop_option_reaches_replay_not_faust(tmp_path: Path) -> None:
    """``import faust`` reads ``--loop`` from ``sys.argv`` to pick an event loop: the ``k2`` commands must not
    import faust, or ``k2 replay --loop 2`` dies with "No module named '2'" before it parses a flag."""
    import subprocess
    import sys

    missing = tmp_path / "no-such-folder"
    proc = subprocess.run(
        [sys.executable, "-m", "k2.cli.main", "replay", str(missing), "--loop", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SAMPLE.parents[1],
    )
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and str(missing) in proc.stderr, (proc.returncode, proc.stderr)
