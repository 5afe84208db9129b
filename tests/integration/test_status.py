"""``k2 status`` against a real worker: faust's members and assignments as Kafka describes them, and the
partitions nobody lands once the worker is gone, named by ``k2 status``, ``k2 tables`` and ``k2 audit``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.k2env import K2Env
from tests.integration.law import assert_law

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def status(env: K2Env, *args: str) -> tuple[int, dict[str, Any]]:
    done = env.k2("status", "--json", *args, check=False)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, doc


def test_the_groups_view_of_a_worker_and_of_no_worker(sqlite_env: K2Env) -> None:
    env = sqlite_env
    s = env.settings
    sources = {(t, p) for t, n in ((s.trades_topic, 6), (s.quotes_topic, 6), (s.reference_topic, 1)) for p in range(n)}
    env.k2("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")
    worker = env.start_worker()
    env.wait_landed()
    deadline = time.monotonic() + 90
    while True:  # the group commits its offsets on its own beat
        code, doc = status(env)
        if (code == 0 and all(p["consumer_lag"] == 0 for p in doc["partitions"])) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 0, doc["summary"]
    group = doc["group"]
    assert (group["group_id"], group["state"], group["protocol"]) == (s.app_id, "stable", "faust")
    (member,) = group["members"]
    assert member["client_id"].startswith("k2-") and member["host"] == "127.0.0.1"
    # faust's assignment parses: the source partitions, its changelogs and its assignor topic.
    assigned = {tuple(tp) for tp in member["partitions"]}
    assert sources <= assigned and any("changelog" in t for t, _ in assigned)
    parts = {(p["topic"], p["partition"]): p for p in doc["partitions"]}
    assert set(parts) == sources
    assert all(p["owner"]["member_id"] == member["member_id"] for p in parts.values())
    assert all(p["lake_lag"] == 0 and p["consumer_lag"] == 0 and not p["unowned_with_lag"] for p in parts.values())
    assert doc["summary"].startswith("every partition with records waiting is owned; 13 partitions, lake lag 0")

    worker.stop()  # SIGTERM: it lands what it holds and leaves the group
    env.k2("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")
    code, doc = status(env)
    assert code == 1 and doc["group"]["state"] == "empty" and doc["group"]["members"] == []
    parts = {(p["topic"], p["partition"]): p for p in doc["partitions"]}
    behind = {tp for tp, p in parts.items() if p["end"] > (-1 if p["mark"] is None else p["mark"]) + 1}
    assert behind and {tuple(w.rsplit("/", 1)) for w in doc["unowned"]} == {(t, str(p)) for t, p in behind}
    assert all(parts[tp]["waited_s"] is not None and parts[tp]["lake_lag"] > 0 for tp in behind)

    text = env.k2("status", check=False)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[2] == f"group {s.app_id}: empty, 0 members, assignor -"
    first = lines.index(
        f"NOT LANDING: {len(behind)} partition{'s' if len(behind) > 1 else ''} with records waiting and no owner:"
    )
    named = lines[first + 1 : first + 1 + len(behind)]
    assert {line.split(":")[0].strip() for line in named} == {f"{t}/{p}" for t, p in behind}
    assert lines[-1].startswith("NOT LANDING:")

    tables = env.k2("tables")  # informational: exit 0, one line on the unowned
    (line,) = [x for x in tables.stdout.splitlines() if x.startswith("unowned: ")]
    assert all(f"{t}/{p} (" in line for t, p in behind) and f"group {s.app_id} (empty)" in line
    audited = env.k2("audit", check=False)
    assert audited.returncode == 0 and "note  unowned: " in audited.stdout, audited.stdout
    ended = env.k2("audit", "--to-end", check=False)
    assert ended.returncode == 1, ended.stdout
    for t, p in behind:
        first, last = parts[(t, p)]["mark"] + 1, parts[(t, p)]["end"] - 1
        assert f"missing            {t}/{p}: {first if first == last else f'{first}-{last}'}\n" in ended.stdout

    env.start_worker()
    env.wait_landed()
    code, doc = status(env)
    assert code == 0 and not doc["unowned"], doc["summary"]
    assert_law(env)
