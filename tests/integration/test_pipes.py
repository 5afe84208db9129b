"""Every ``k2`` command that prints ends quietly when its reader goes away (``k2 tables | head``).

As Unix tools do: no traceback and no "Exception ignored" on stderr, and the exit status a
shell gives a writer its reader left (128 + SIGPIPE = 141). The reader here is a pipe whose
read end is closed before the command starts, so the first write the command makes fails
whatever the size of its output; one real ``| head -1`` on a long output as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.k2env import BIN, ROOT, K2Env

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
READER_GONE = 128 + signal.SIGPIPE
TRADES = "select * from market_data.trades"


@pytest.fixture(scope="module")
def landed(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[K2Env]:
    """The sample landed on the embedded catalog; the worker stopped (the commands only read)."""
    env = K2Env(stack, tmp_path_factory.mktemp("pipes"), "sqlite")
    try:
        env.k2("init")
        worker = env.start_worker()
        env.k2("replay", str(SAMPLE), "--no-progress")
        env.wait_landed()
        worker.stop()
        yield env
    finally:
        env.close()


def into_a_closed_pipe(env: K2Env, *args: str) -> subprocess.CompletedProcess[str]:
    """``k2 ARGS`` with stdout a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [str(BIN / "k2"), *args],
            cwd=ROOT,
            env=env.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)


def assert_quiet(done: subprocess.CompletedProcess[str], status: int = READER_GONE) -> None:
    for noise in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert noise not in done.stderr, done.stderr
    assert done.returncode == status, done.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["tables", "--help"]], ids=" ".join)
def test_help_whose_reader_is_gone_ends_quietly(landed: K2Env, args: list[str]) -> None:
    """argparse ignores a failed write of its own messages, and exits 0."""
    assert_quiet(into_a_closed_pipe(landed, *args), status=0)


@pytest.mark.parametrize(
    "args",
    [
        ["init"],
        ["tables"],
        ["tables", "--head", "market_data.trades", "-n", "100"],
        ["audit"],
        ["audit", "--json"],
        ["maintain", "--dry-run"],
        ["maintain", "--dry-run", "--json"],
        ["query", TRADES],
        ["query", TRADES, "--format", "csv"],
        ["rejects", "list"],
        ["rejects", "replay"],
    ],
    ids=" ".join,
)
def test_a_command_whose_reader_is_gone_ends_quietly(landed: K2Env, args: list[str]) -> None:
    assert_quiet(into_a_closed_pipe(landed, *args))


def test_replay_whose_reader_is_gone_ends_quietly(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "sqlite")
    env.k2("init", "--skip-tables")
    assert_quiet(into_a_closed_pipe(env, "replay", str(SAMPLE), "--symbols", "BHP", "--no-progress"))


def test_tables_into_head(landed: K2Env) -> None:
    """The README's own use: a long output (well past a pipe's 64 KiB) into ``head -1``, in a real shell pipeline."""
    script = '"$K2" tables --head market_data.trades -n 2000 | head -1; echo "status ${PIPESTATUS[*]}" >&2'
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=landed.env | {"K2": str(BIN / "k2")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout.startswith("catalog ") and done.stdout.count("\n") == 1, done.stdout
    assert done.stderr.strip() == f"status {READER_GONE} 0", done.stderr
