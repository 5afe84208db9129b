"""Secrets planted in every setting that can hold one are never printed: logs, views, metrics, commands, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.k2env import ROOT, K2Env

pytestmark = [pytest.mark.integration, pytest.mark.rest]

SAMPLE = ROOT / "data" / "sample"
PLANTED = {
    "registry": "S3CRET-registry-1",
    "token": "S3CRET-token-2",
    "s3": "S3CRET-s3-key-3",
    "uri": "S3CRET-uri-4",
}


def test_no_output_surface_shows_a_planted_secret(stack: Any, tmp_path: Path) -> None:
    env = K2Env(stack, tmp_path, "rest", K2_SCHEMA_REGISTRY_BASIC_AUTH=f"k2user:{PLANTED['registry']}")
    rest = stack.rest_uri.replace("http://", f"http://k2:{PLANTED['uri']}@")
    env.env |= {
        "PYICEBERG_CATALOG__K2__URI": rest,
        "PYICEBERG_CATALOG__K2__TOKEN": PLANTED["token"],
        "PYICEBERG_CATALOG__K2__S3__SECRET_ACCESS_KEY": PLANTED["s3"],
    }
    env.drop_tables()
    seen: list[str] = []
    try:
        for args in (("init",), ("replay", str(SAMPLE), "--symbols", "MWR", "--no-progress")):
            done = env.k2(*args)
            seen += [done.stdout, done.stderr]
        worker = env.start_worker()
        env.wait_landed()
        for args in (("tables",), ("audit",), ("maintain", "--dry-run"), ("rejects", "list")):
            done = env.k2(*args, check=False)
            seen += [done.stdout, done.stderr]
        for path in ("/k2/", "/k2/overview", "/k2/lag", "/k2/tables", "/k2/ready", "/k2/instruments", "/metrics"):
            seen.append(env.get(path))
        # An error that names the catalog: the same password in a URI that does not answer.
        env.env["PYICEBERG_CATALOG__K2__URI"] = f"http://k2:{PLANTED['uri']}@127.0.0.1:9/"
        done = env.k2("tables", check=False)
        assert done.returncode != 0
        assert "Iceberg catalog 'k2'" in done.stderr and "port=9)" in done.stderr, done.stderr
        seen += [done.stdout, done.stderr]
        env.close()
        seen.append(worker.log.read_text(errors="replace"))
    finally:
        env.close()
    text = "\n".join(seen)
    # The surfaces were really read: the worker logs its settings and catalog configuration at start.
    for surface in ("Worker ready", "Iceberg catalog 'k2'"):
        assert surface in text, f"{surface!r} was never printed: the surfaces were not all read\n{text[-3000:]}"
    for what, secret in PLANTED.items():
        assert secret not in text, f"the {what} secret was printed"
