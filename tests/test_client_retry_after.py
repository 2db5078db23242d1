"""The client honours `Retry-After` (issue 25): a 429 with `Retry-After: N` makes its transport (veil_client's
`Http`, urllib3's `Retry` under a requests session) wait N seconds and try again; the call then succeeds.

No real waiting and no clock: the `time` that urllib3's retry module sleeps with is replaced by a recorder, so
the tests assert the seconds the client asked to wait. First against a tiny local HTTP server (429 once, then
200), then against the API's own per-key rate limit (its 429 and `Retry-After`, parsed by the client)."""

from __future__ import annotations

import json
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.util.retry

from _service_helpers import new_key, settings_for
from veil.api.app import create_app
from veil.storage.testing import serve_app
from veil_client._http import Http
from veil_client.client import Client
from veil_client.errors import Unreachable


@pytest.fixture
def sleeps(monkeypatch):
    """Every sleep urllib3's Retry asks for (Retry-After or backoff), recorded instead of slept; `on_sleep`
    (a list of callables) runs in its place, to stand in for the time passing."""
    record = types.SimpleNamespace(asked=[], on_sleep=[])

    def sleep(seconds: float) -> None:
        record.asked.append(seconds)
        for action in record.on_sleep:
            action()

    monkeypatch.setattr(urllib3.util.retry, "time", types.SimpleNamespace(sleep=sleep, time=time.time))
    return record


class _Busy(BaseHTTPRequestHandler):
    """429 (with the server's `retry_after` header, if any) for the first request, then 200 with a JSON body."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.seen.append((self.path, self.headers.get("access_token")))
        if len(server.seen) == 1:
            body = json.dumps({"detail": "too many requests for this key"}).encode()
            self.send_response(429)
            if server.retry_after is not None:
                self.send_header("Retry-After", server.retry_after)
        else:
            body = json.dumps({"jobs": []}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def busy_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    server.seen, server.retry_after = [], None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("retry_after", [2, 7])
def test_a_429_with_retry_after_is_waited_for_then_the_call_succeeds(busy_server, sleeps, retry_after):
    busy_server.retry_after = str(retry_after)
    client = Client(f"http://127.0.0.1:{busy_server.server_port}", "k" * 36)
    assert client.call("GET", "/jobs", "list the jobs") == {"jobs": []}
    assert sleeps.asked == [retry_after]  # the server's seconds, once, before the second try
    assert busy_server.seen == [("/v1/jobs", "k" * 36)] * 2


def test_without_retry_after_the_first_retry_does_not_wait_for_seconds(busy_server, sleeps):
    """The control: the seconds above came from the header (urllib3's first backoff is 0, so no sleep)."""
    client = Client(f"http://127.0.0.1:{busy_server.server_port}", "k" * 36)
    assert client.call("GET", "/jobs", "list the jobs") == {"jobs": []}
    assert sleeps.asked == [] and len(busy_server.seen) == 2


def test_the_apis_rate_limit_429_is_parsed_and_waited_for(tmp_path, sleeps, monkeypatch):
    """The API's real 429 (per-key rate limit): the client waits the `Retry-After` the API sent, and its retry,
    once the window has room again, succeeds. The wait stands in for the time passing by emptying the
    limiter's windows."""
    parsed: list[tuple[str, float]] = []
    parse = urllib3.util.retry.Retry.parse_retry_after

    def spy(self, value: str) -> float:
        seconds = parse(self, value)
        parsed.append((value, seconds))
        return seconds

    monkeypatch.setattr(urllib3.util.retry.Retry, "parse_retry_after", spy)
    app = create_app(settings_for(tmp_path, api_rate_limit="3/minute"))
    with serve_app(app) as base:
        key = new_key(app.state.service)
        client = Client(base, key, http=Http(retries=3))
        for _ in range(3):
            assert client.call("GET", "/jobs", "list the jobs") is not None
        assert sleeps.asked == []
        sleeps.on_sleep.append(app.state.rate_limiter.windows.limiter.storage.reset)
        assert client.call("GET", "/jobs", "list the jobs") is not None  # a 429 first, then the retry
        assert len(parsed) == 1
        header, seconds = parsed[0]
        assert 1 <= int(header) <= 60 and seconds == int(header)
        assert sleeps.asked == [seconds]

        # Without the time passing, every retry is refused again: each waited for as the API says, then the
        # client reports the 429 as the server being unreachable.
        sleeps.on_sleep.clear()
        sleeps.asked.clear()
        for _ in range(2):  # the retry above was the first request of the emptied window
            client.call("GET", "/jobs", "list the jobs")
        with pytest.raises(Unreachable, match="HTTP 429"):
            client.call("GET", "/jobs", "list the jobs")
        assert len(sleeps.asked) == 3 and sleeps.asked == [seconds for _, seconds in parsed[1:]]
