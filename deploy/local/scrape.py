#!/usr/bin/env python3
"""Show that the local Prometheus (stack profile ``prometheus``) scrapes the worker, for ``make run``.

Waits until Prometheus has scraped the worker after the sample landed, then prints a few
answers of its HTTP API: rows committed per table, lake lag, age of the last commit.
Standard library only. Exit 0 with a note when Prometheus has no data yet (``make run``
must not fail for want of a scrape), 1 when Prometheus does not answer at all.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

URL = f"http://127.0.0.1:{os.environ.get('K2_PROMETHEUS_PORT') or 9090}"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

QUERIES = (
    ("rows committed to Iceberg", "sum by (table) (k2_rows_written_total)", "table"),
    ("lake lag (events not in Iceberg yet)", "sum by (topic) (k2_lake_lag)", "topic"),
    ("seconds since the last commit", "max by (table) (k2_iceberg_last_commit_age_seconds)", "table"),
)


def query(expr: str) -> list[dict]:
    url = f"{URL}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with _NO_PROXY.open(url, timeout=5) as resp:
        data = json.load(resp)
    return list(data["data"]["result"])


def main(timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    try:
        # Written rows appear once a scrape after the last commit has happened.
        while not query("sum(k2_rows_written_total) > 0 and sum(k2_lake_lag) == 0") and time.monotonic() < deadline:
            time.sleep(1)
        up = query('up{job="k2-worker"}')
    except (urllib.error.URLError, OSError) as exc:
        print(f"prometheus: no answer from {URL} ({exc}); is the stack's prometheus profile up?", file=sys.stderr)
        return 1
    print(f"Prometheus ({URL}) scraping the worker:")
    if not up or up[0]["value"][1] != "1":
        print("  the worker's /metrics was not scraped yet (target k2-worker down or unknown);")
        print(f"  see {URL}/targets")
        return 0
    for title, expr, label in QUERIES:
        print(f"  {title}:  {expr}")
        for row in sorted(query(expr), key=lambda r: r["metric"].get(label, "")):
            print(f"    {row['metric'].get(label, '-'):<32} {float(row['value'][1]):>12.1f}")
    print(f"  more: {URL}/graph, alerts at {URL}/alerts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
