"""Liveness bounds on the real stack: a partition that cannot be positioned is named, then the worker exits.

The fault suite (``tests/faults/test_liveness.py``) checks that partitions land under what the
group and the producers do; this checks the bound itself: a worker that cannot position its
partitions for no reason outside K2 (here: the lake's bookkeeping edited by hand, a mark that
is not a number) says which partitions and why in ``/k2/ready`` and ``/k2/partitions`` past
``K2_POSITION_TIMEOUT_S``, and exits non-zero after ``K2_STUCK_EXIT_S`` so that the group hands
its partitions to another worker, instead of holding them unread while it looks alive.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from k2.lake.arrow import arrow_schema
from k2.lake.schemas import TRADES
from tests.integration.k2env import K2Env

pytestmark = pytest.mark.integration

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_worker_that_cannot_position_names_the_partitions_then_exits(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite", K2_POSITION_TIMEOUT_S="3", K2_STUCK_EXIT_S="15")
    try:
        env.k2("init")
        table = env.catalog().load_table("market_data.trades")
        garbage = {f"k2.offsets.{env.settings.trades_topic}.0": "not-a-number", "k2.commit-id": "by-hand"}
        table.append(pa.Table.from_pylist([], schema=arrow_schema(TRADES)), snapshot_properties=garbage)
        worker = env.start_worker(wait=False)
        deadline = time.monotonic() + 240
        named: Any = None
        while worker.proc.poll() is None and time.monotonic() < deadline:
            try:
                status, body = get(worker.port, "/k2/ready")
                if status == 503 and "past the bound" in body["checks"]["ingest"]["detail"]:
                    named = body["checks"]["ingest"]["detail"]
                    _, held = get(worker.port, "/k2/partitions")
                    assert {row["phase"] for row in held["partitions"]} == {"positioning"}
            except OSError:
                pass
            time.sleep(0.5)
        assert worker.proc.poll() is not None, f"the worker did not exit:\n{worker.tail()}"
        assert worker.proc.returncode not in (0, None)
        assert named is not None and f"{env.settings.trades_topic}/0" in named, named
        log = worker.log.read_text(errors="replace")
        assert "not consuming for no reason outside K2" in log and "malformed K2 offset" in log
    finally:
        env.close()
