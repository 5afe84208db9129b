"""``k2 init`` against a REST catalog that answers its configuration and then nothing: it waits out
``--wait`` seconds and ends with one line saying what did not answer, exit 2, no traceback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k2.cli.main import main
from k2.settings import get_settings


class _Silent(BaseHTTPRequestHandler):
    """Answers ``GET /v1/config`` and holds every other request without an answer."""

    def do_GET(self) -> None:
        if self.path.startswith("/v1/config"):
            body = json.dumps({"defaults": {}, "overrides": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        time.sleep(5)

    do_POST = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def silent_catalog(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("PYICEBERG_CATALOG__K2__TYPE", "rest")
    monkeypatch.setenv("PYICEBERG_CATALOG__K2__URI", uri)
    monkeypatch.setenv("K2_CATALOG_TIMEOUT_S", "0.3")
    get_settings.cache_clear()
    try:
        yield uri
    finally:
        get_settings.cache_clear()
        server.shutdown()


def test_init_gives_up_on_a_catalog_that_does_not_answer_in_one_line(
    silent_catalog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code = main(["init", "--skip-topics", "--skip-schemas", "--wait", "2"])
    took = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("k2 init: "), err
    assert "market_data" in err[0] and "did not answer" in err[0] and "--wait" in err[0], err
    assert took < 30


def test_any_command_ends_in_one_line_when_a_service_stops_answering(
    silent_catalog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tables"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("k2 tables: a service K2 needs did not answer ("), err
