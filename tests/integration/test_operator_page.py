"""The operator page (`/k2/`) in headless Chromium: it renders, shows what the JSON views say, updates by itself.

Debian's chromium, driven by playwright's Python client (no browser download): the page
must need nothing from outside the worker (the machine's network is closed anyway).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.k2env import ROOT, K2Env

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "data" / "sample"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "var" / "operator-page.png"  # README's docs/operator-page.png is a copy of one
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page() -> Iterator[Any]:
    if CHROMIUM is None:  # `make system-deps` installs Debian's chromium; CI runs it
        raise AssertionError("chromium is not installed: run `make system-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


def cell_numbers(page: Any, table: str, column: int) -> list[int]:
    texts = page.locator(f"#{table} tbody tr td:nth-child({column})").all_inner_texts()
    return [int(t.replace(",", "")) for t in texts if t.replace(",", "").isdigit()]


def test_the_operator_page_shows_the_views_numbers_and_follows_a_replay(sqlite_env: K2Env, page: Any) -> None:
    env = sqlite_env
    worker = env.start_worker()
    env.k2("replay", str(SAMPLE), "--symbols", "MWR,DVN", "--no-progress")
    env.wait_landed()
    url = f"http://127.0.0.1:{worker.port}/k2/"
    page.goto(url)
    page.wait_for_function("document.getElementById('at').textContent !== 'never'")
    overview = json.loads(env.get("/k2/overview"))
    assert page.locator("#worker").inner_text() == overview["worker_id"]
    ends = {(r["topic"], r["partition"]): r["end_offset"] for r in overview["lag"]["partitions"]}
    shown_ends = cell_numbers(page, "partitions", 3)
    assert sorted(shown_ends) == sorted(ends.values())
    trades_rows = next(t["rows"] for t in overview["tables"] if t["table"] == "market_data.trades")
    row = page.locator("#tables tbody tr", has_text="market_data.trades")
    assert int(row.locator("td").nth(1).inner_text().replace(",", "")) == trades_rows == 243
    assert page.locator("#checks tbody tr").count() == len(overview["ready"]["checks"])
    # Without a reload, the page follows a replay within a few refreshes.
    env.k2("replay", str(SAMPLE), "--symbols", "BHP", "--no-progress")
    env.wait_landed()
    deadline = time.monotonic() + 30
    while int(row.locator("td").nth(1).inner_text().replace(",", "")) != 2243:
        assert time.monotonic() < deadline, "the page did not update after the replay"
        time.sleep(1)
    page.wait_for_function("document.getElementById('status').textContent === 'ready'", timeout=30_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_page_needs_nothing_from_outside(sqlite_env: K2Env) -> None:
    sqlite_env.start_worker()
    html = sqlite_env.get("/k2/")
    assert "<table" in html and "/k2/overview" in html
    for marker in ("http://", "https://", "//cdn", "<link", "src="):
        assert marker not in html, marker
