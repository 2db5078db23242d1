"""Callbacks: signatures, retries, the per-attempt deadline, address checks (SSRF, DNS rebinding) and the
fair background dispatcher, against real HTTP receivers on 127.0.0.1; and, through the service, that dead
receivers delay neither pricing nor other keys nor shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from _service_helpers import jpeg_bytes, new_key, seed_upload, settings_for
from veil.api.app import create_app
from veil.db.models import CallbackDelivery
from veil.jobs import callbacks
from veil.jobs.callbacks import (
    CallbackDispatcher,
    InvalidCallbackURL,
    deliver,
    sign,
    signature_headers,
    validate_callback_url,
    verify,
)
from veil.settings import parse_networks

SECRET = "s3cret-for-tests"
REPORT = {
    "job_id": "8c1f0a4e-0000-4000-8000-000000000001",
    "job_status": 100,
    "job_status_description": "completed",
    "job_total_credit_cost": 3,
    "tasks": [{"output_file": "a.jpg", "download_link": "http://127.0.0.1/x?sig=1"}],
}
LOOPBACK = parse_networks("127.0.0.0/8")  # the test receivers' network, allowed as an operator would


class Receiver:
    """A real HTTP server that answers `plan[i]` to the i-th request (then 200) and records them; with a
    `gate`, it holds every answer until the gate opens (the fixture opens it at the end of the test)."""

    def __init__(
        self, plan: list[int], gate: threading.Event | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.plan, self.gate, self.requests, self.answered = list(plan), gate, [], 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                if receiver.gate is not None:
                    receiver.gate.wait(120)
                status = receiver.plan.pop(0) if receiver.plan else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.answered += 1

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}/hook?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator:
    made: list[Receiver] = []

    def make(plan: list[int], gate: threading.Event | None = None, **where) -> Receiver:
        made.append(Receiver(plan, gate, **where))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _wait_for(condition, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_retried_until_accepted_and_signature_verifies(receiver_factory) -> None:
    receiver = receiver_factory([500, 503])  # fails twice, then accepts
    outcome = deliver(receiver.url, REPORT, SECRET, attempts=5, backoff=0.01, allowed=LOOPBACK)
    assert outcome.delivered and outcome.attempts == 3 and outcome.status_code == 200
    assert len(receiver.requests) == 3
    ids = {h["X-Veil-Delivery"] for h, _ in receiver.requests}
    assert len(ids) == 1  # one notification, retried
    headers, body = receiver.requests[-1]
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert json.loads(body) == REPORT
    assert verify(body, SECRET, headers["X-Veil-Signature"], headers["X-Veil-Timestamp"])
    assert not verify(body, "wrong-secret", headers["X-Veil-Signature"], headers["X-Veil-Timestamp"])
    assert not verify(body.replace(b"100", b"200"), SECRET, headers["X-Veil-Signature"], headers["X-Veil-Timestamp"])


def test_client_errors_are_not_retried_but_408_and_429_are(receiver_factory) -> None:
    refused = receiver_factory([404])
    outcome = deliver(refused.url, REPORT, SECRET, attempts=5, backoff=0.01, allowed=LOOPBACK)
    assert outcome.status == "refused" and outcome.status_code == 404
    assert len(refused.requests) == 1
    busy = receiver_factory([429, 408])
    assert deliver(busy.url, REPORT, SECRET, attempts=5, backoff=0.01, allowed=LOOPBACK).delivered
    assert len(busy.requests) == 3


def test_gives_up_after_attempts_reporting_each_retry(receiver_factory) -> None:
    down = receiver_factory([500] * 10)
    retries: list[callbacks.Outcome] = []
    outcome = deliver(down.url, REPORT, SECRET, attempts=3, backoff=0.01, allowed=LOOPBACK, on_retry=retries.append)
    assert outcome.status == "failed" and outcome.attempts == 3 and outcome.error == "HTTP 500"
    assert [(r.status, r.attempts, r.status_code) for r in retries] == [("queued", 1, 500), ("queued", 2, 500)]
    assert len(down.requests) == 3


def test_connection_refused_is_retried_then_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    outcome = deliver(f"http://127.0.0.1:{port}/hook", REPORT, SECRET, attempts=2, backoff=0.01, allowed=LOOPBACK)
    assert outcome.status == "failed" and outcome.attempts == 2 and "Connection" in outcome.error


class Trickler:
    """A receiver that starts a 200 answer, then sends one header line every `every` seconds (`lines` of them)
    before it ends the headers; records whether the client hung up first."""

    def __init__(self, lines: int = 40, every: float = 0.2) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.sent, self.cut = 0, threading.Event()
        threading.Thread(target=self._serve, args=(lines, every), daemon=True).start()

    def _serve(self, lines: int, every: float) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for n in range(lines):
                    time.sleep(every)
                    conn.sendall(f"X-Slow-{n}: 1\r\n".encode())
                    self.sent += 1
                conn.sendall(b"Content-Length: 0\r\n\r\n")
            except OSError:
                self.cut.set()


def test_a_trickling_receiver_is_cut_at_the_attempts_deadline() -> None:
    """Every read gets a header line well within any per-read timeout; only a deadline for the whole attempt
    ends it (the receiver would finish its 200 after 40 lines, 8 s)."""
    trickler = Trickler(lines=40, every=0.2)
    outcome = deliver(trickler.url, REPORT, SECRET, attempts=1, timeout=1.0, allowed=LOOPBACK)
    assert outcome.status == "failed" and "deadline" in outcome.error, outcome
    assert trickler.cut.wait(20) and trickler.sent < 40


@pytest.mark.parametrize(
    "url, shown, kind",
    [
        ("http://127.0.0.1:9/x", "127.0.0.1", "loopback"),
        ("http://localhost:8000/admin/api/keys", "localhost (127.0.0.1)", "loopback"),
        ("http://[::1]/", "::1", "loopback"),
        ("http://0.0.0.0:8000/", "0.0.0.0", "unspecified"),
        ("http://[::]/", "::", "unspecified"),
        ("http://2130706433/", "2130706433 (127.0.0.1)", "loopback"),
        ("http://0x7f000001/", "0x7f000001 (127.0.0.1)", "loopback"),
        ("http://0177.0.0.1/", "0177.0.0.1 (127.0.0.1)", "loopback"),
        ("http://127.1/", "127.1 (127.0.0.1)", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "(127.0.0.1)", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "(169.254.169.254)", "link-local"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://10.0.0.5/", "10.0.0.5", "private"),
        ("http://172.16.3.4/", "172.16.3.4", "private"),
        ("http://192.168.1.1/", "192.168.1.1", "private"),
        ("http://[fd00::1]/", "fd00::1", "private"),
        ("http://100.64.0.1/", "100.64.0.1", "non-public"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
    ],
)
def test_internal_addresses_are_refused_in_every_spelling(url: str, shown: str, kind: str) -> None:
    with pytest.raises(
        InvalidCallbackURL,
        match=f"points at .*{shown.replace('(', '[(]').replace(')', '[)]')}.*{kind} addresses are not allowed",
    ):
        validate_callback_url(url)
    outcome = deliver(url, REPORT, SECRET, attempts=3, backoff=0.01)  # nothing is sent either
    assert outcome.status == "failed" and outcome.attempts == 0 and kind in outcome.error


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks?a=1",
        "http://8.8.8.8/x",
        "http://[2001:4860:4860::8888]:8080/",
        "https://bücher.example/x",
    ],
)
def test_public_callback_urls_are_accepted(url: str) -> None:
    assert validate_callback_url(url) == url


def test_allowed_networks_let_on_premises_receivers_in() -> None:
    assert validate_callback_url("http://10.1.2.3/x", parse_networks("10.0.0.0/8, fd00::/8")) == "http://10.1.2.3/x"
    assert validate_callback_url("http://[::ffff:10.1.2.3]/", parse_networks("10.0.0.0/8"))
    with pytest.raises(InvalidCallbackURL, match="private"):
        validate_callback_url("http://192.168.0.1/", parse_networks("10.0.0.0/8"))
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP network"):
        parse_networks("10.0.0.0/33")


@pytest.fixture
def fake_dns(monkeypatch):
    """Resolves `hook.test` to the next address of `answers` (recording each lookup); other names as usual."""
    real = socket.getaddrinfo
    state = {"answers": [], "lookups": []}

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hook.test":
            return real(host, port, *args, **kwargs)
        address = state["answers"].pop(0)
        state["lookups"].append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


def test_a_name_resolving_to_an_internal_address_is_refused_at_delivery(receiver_factory, fake_dns) -> None:
    internal = receiver_factory([])
    fake_dns["answers"] = ["127.0.0.1"] * 3
    url = f"http://hook.test:{internal.port}/hook"
    assert validate_callback_url(url) == url  # a name: checked when it is resolved
    outcome = deliver(url, REPORT, SECRET, attempts=3, backoff=0.01)
    assert outcome.status == "failed" and "hook.test (127.0.0.1)" in outcome.error and "loopback" in outcome.error
    assert internal.requests == [] and fake_dns["lookups"] == ["127.0.0.1"]  # refused, not retried


def test_the_checked_address_is_the_one_connected_to(receiver_factory, fake_dns) -> None:
    """DNS rebinding: the name first resolves to an allowed address, then to an internal one. The attempt
    resolves once and connects to the address it checked, sending the original Host."""
    allowed_receiver = receiver_factory([], host="127.0.0.2")
    for _ in range(20):  # the internal receiver on the same port of another loopback address
        try:
            internal = receiver_factory([], host="127.0.0.1", port=allowed_receiver.port)
            break
        except OSError:
            allowed_receiver = receiver_factory([], host="127.0.0.2")
    fake_dns["answers"] = ["127.0.0.2", "127.0.0.1", "127.0.0.1"]
    url = f"http://hook.test:{allowed_receiver.port}/hook?x=1"
    outcome = deliver(url, REPORT, SECRET, attempts=1, allowed=parse_networks("127.0.0.2/32"))
    assert outcome.delivered, outcome
    assert fake_dns["lookups"] == ["127.0.0.2"] and internal.requests == []
    headers, body = allowed_receiver.requests[0]
    assert headers["Host"] == f"hook.test:{allowed_receiver.port}" and json.loads(body) == REPORT


def _certificate_for(name: str, tmp_path) -> tuple[str, str]:
    """A self-signed certificate for `name` (cert file, key file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def test_https_goes_to_the_checked_address_with_the_names_sni(receiver_factory, fake_dns, tmp_path) -> None:
    import ssl

    cert, key = _certificate_for("hook.test", tmp_path)
    receiver = receiver_factory([], host="127.0.0.2")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_side.sni_callback = lambda sock, name, context: names.append(name)
    receiver.server.socket = server_side.wrap_socket(receiver.server.socket, server_side=True)
    fake_dns["answers"] = ["127.0.0.2"]
    outcome = deliver(
        f"https://hook.test:{receiver.port}/hook",
        REPORT,
        SECRET,
        attempts=1,
        allowed=parse_networks("127.0.0.2/32"),
        ssl_context=ssl.create_default_context(cafile=cert),
    )
    assert outcome.delivered, outcome
    assert names == ["hook.test"] and receiver.requests[0][0]["Host"] == f"hook.test:{receiver.port}"
    fake_dns["answers"] = ["127.0.0.2"]  # the certificate is verified: one the client does not trust is refused
    outcome = deliver(
        f"https://hook.test:{receiver.port}/hook",
        REPORT,
        SECRET,
        attempts=1,
        allowed=parse_networks("127.0.0.2/32"),
        ssl_context=ssl.create_default_context(),
    )
    assert outcome.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in outcome.error


def _outcomes() -> tuple[dict, callable]:
    done: dict[str, callbacks.Outcome] = {}

    def on_done_for(name: str):  # final outcomes only
        return lambda outcome: outcome.status == "queued" or done.__setitem__(name, outcome)

    return done, on_done_for


def test_dispatcher_does_not_block_the_caller(receiver_factory) -> None:
    gate = threading.Event()
    receiver = receiver_factory([503], gate)
    done, on_done = _outcomes()
    with CallbackDispatcher(workers=2, backoff=0.01, allowed=LOOPBACK) as dispatcher:
        assert dispatcher.submit("key", receiver.url, REPORT, SECRET, "d-1", on_done("d-1"))
        assert not done  # the receiver is held: the caller went on anyway
        gate.set()
        assert _wait_for(lambda: "d-1" in done)
    assert done["d-1"].delivered and len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    assert headers["X-Veil-Delivery"] == "d-1"
    assert verify(body, SECRET, headers["X-Veil-Signature"], headers["X-Veil-Timestamp"])


def test_one_keys_dead_receivers_do_not_hold_other_keys(receiver_factory) -> None:
    gate = threading.Event()
    dead = [receiver_factory([], gate) for _ in range(3)]
    live = receiver_factory([])
    done, on_done = _outcomes()
    dispatcher = CallbackDispatcher(workers=4, per_key=2, timeout=120, allowed=LOOPBACK)
    for n, receiver in enumerate(dead * 2):
        assert dispatcher.submit("A", receiver.url, REPORT, SECRET, on_done=on_done(f"A{n}"))
    assert _wait_for(lambda: sum(len(r.requests) for r in dead) == 2)  # A holds its two threads
    assert dispatcher.submit("B", live.url, REPORT, SECRET, on_done=on_done("B"))
    assert _wait_for(lambda: "B" in done) and done["B"].delivered
    assert sum(len(r.requests) for r in dead) == 2 and not any(k.startswith("A") for k in done)
    dispatcher.close()  # returns although A's receivers still hold two attempts
    assert not any(r.answered for r in dead)
    assert {k for k, o in done.items() if o.status == "dropped"} == {"A2", "A3", "A4", "A5"}


def test_a_keys_queue_is_bounded(receiver_factory) -> None:
    gate = threading.Event()
    dead = receiver_factory([], gate)
    dispatcher = CallbackDispatcher(workers=1, queue_per_key=2, timeout=120, allowed=LOOPBACK)
    assert dispatcher.submit("A", dead.url, REPORT, SECRET)
    assert _wait_for(lambda: dead.requests)  # in flight: no longer queued
    assert dispatcher.submit("A", dead.url, REPORT, SECRET) and dispatcher.submit("A", dead.url, REPORT, SECRET)
    assert not dispatcher.submit("A", dead.url, REPORT, SECRET)  # full
    dispatcher.close()
    assert not dispatcher.submit("B", dead.url, REPORT, SECRET)  # closed


def test_close_stops_waiting_retries(receiver_factory) -> None:
    down = receiver_factory([500] * 10)
    done, on_done = _outcomes()
    dispatcher = CallbackDispatcher(attempts=5, backoff=30, allowed=LOOPBACK)
    dispatcher.submit("key", down.url, REPORT, SECRET, on_done=on_done("d"))
    assert _wait_for(lambda: down.requests)
    dispatcher.close()  # would wait 30 s for the next attempt otherwise
    assert _wait_for(lambda: "d" in done, 10) and done["d"].status == "failed"
    assert len(down.requests) == 1


def test_sign_and_verify_rules() -> None:
    body = b'{"job_id":"x"}'
    headers = signature_headers(body, SECRET, timestamp=1_700_000_000)
    assert headers["X-Veil-Timestamp"] == "1700000000"
    assert headers["X-Veil-Signature"] == "sha256=" + sign(body, SECRET, 1_700_000_000)
    # the documented recipe, done by hand
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Veil-Signature"] == f"sha256={expected}"
    sig, ts = headers["X-Veil-Signature"], headers["X-Veil-Timestamp"]
    assert verify(body, SECRET, sig, ts, now=1_700_000_100)
    assert not verify(body, SECRET, sig, ts, now=1_700_000_000 + 3600)  # replayed an hour later
    assert not verify(body, SECRET, sig, "1700000001", now=1_700_000_000)  # timestamp changed
    assert not verify(body, SECRET, None, ts) and not verify(body, SECRET, expected, ts)


@pytest.mark.parametrize(
    "url,problem",
    [
        ("ftp://example.com/x", "http or https, not 'ftp'"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https, not 'no scheme'"),
        ("http:///nohost", "no host"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://example.com:99999/", "malformed"),
        ("http://example.com:0/", "port must not be 0"),
        ("http://exa mple.com/", "whitespace"),
        ("http://a..b/", "host name is not valid"),
        ("", "empty"),
    ],
)
def test_refused_callback_urls(url: str, problem: str) -> None:
    with pytest.raises(InvalidCallbackURL, match=problem):
        validate_callback_url(url)


# ---------------------------------------------------------------------------------- through the service
def _upload(http, key: str) -> str:
    data = jpeg_bytes()
    r = http.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": "a.jpg", "file_size": len(data), "model": "blur", "model_config": {}},
    )
    assert r.status_code == 200, r.text
    seed_upload(http, r.json()["session_uri"], data)
    return r.json()["job_id"]


def _register(http, key: str, url: str, job_id: str | None = None):
    return http.post(
        "/v1/notify_on_job_status", headers={"access_token": key}, json={"callback_url": url, "job_id": job_id}
    )


def test_dead_receivers_of_one_key_delay_neither_pricing_nor_other_keys_nor_shutdown(tmp_path, receiver_factory):
    """Key A's two receivers never answer (each attempt may last 120 s): key B's upload is still priced and its
    callback delivered, and the service shuts down without waiting for A's receivers."""
    gate = threading.Event()
    dead = [receiver_factory([], gate) for _ in range(2)]
    live = receiver_factory([])
    app = create_app(
        settings_for(
            tmp_path, callback_allowed_networks="127.0.0.0/8", callback_timeout_seconds=120, callback_attempts=1
        )
    )
    with TestClient(app) as http:
        svc = app.state.service
        a, b = new_key(svc), new_key(svc)
        for receiver in dead:
            assert _register(http, a, receiver.url).status_code == 200
        assert _register(http, b, live.url).status_code == 200
        job_a = _upload(http, a)
        assert _wait_for(lambda: all(r.requests for r in dead))  # both of A's deliveries are stuck
        job_b = _upload(http, b)
        assert _wait_for(lambda: svc.get_job(job_b).status == "awaiting_approval"), svc.get_job(job_b).status
        assert _wait_for(lambda: live.requests)
        assert json.loads(live.requests[0][1])["job_id"] == job_b
        assert _wait_for(lambda: _deliveries(svc, job_b) == [("delivered", 1, 200)])
    # the app's shutdown (service.close) has returned while A's receivers still hold their requests
    assert not any(r.answered for r in dead)
    assert _deliveries(svc, job_a) == [("queued", 0, None)] * 2


def _deliveries(svc, job_id: str) -> list[tuple]:
    with svc.db() as session:
        rows = session.scalars(select(CallbackDelivery).where(CallbackDelivery.job_id == job_id))
        return [(d.status, d.attempts, d.status_code) for d in rows]


def test_registration_refuses_internal_addresses_and_too_many_callbacks(tmp_path):
    app = create_app(settings_for(tmp_path, callback_max_per_key=2))
    with TestClient(app) as http:
        key = new_key(app.state.service)
        r = _register(http, key, "http://169.254.169.254/latest/meta-data/")
        assert r.status_code == 422 and "link-local addresses are not allowed" in r.json()["detail"]
        r = _register(http, key, "http://2130706433:8000/admin/api/keys")
        assert r.status_code == 422 and "2130706433 (127.0.0.1)" in r.json()["detail"]
        assert _register(http, key, "https://one.example/hook").status_code == 200
        assert _register(http, key, "https://two.example/hook").status_code == 200
        assert _register(http, key, "https://one.example/hook").status_code == 200  # the same again: no-op
        r = _register(http, key, "https://three.example/hook")
        assert r.status_code == 422 and "the most it may have (2)" in r.json()["detail"]
        other = new_key(app.state.service)  # the limit is per key
        assert _register(http, other, "https://three.example/hook").status_code == 200


def test_housekeeping_drops_deliveries_lost_with_their_process(tmp_path):
    from datetime import timedelta

    from veil.db.models import utcnow
    from veil.jobs.keys import create_key
    from veil.jobs.service import build_service

    svc = build_service(settings_for(tmp_path))
    try:
        key_id = create_key(svc.db, 0)[1].id
        with svc.db.begin() as session:
            session.add_all(
                [
                    CallbackDelivery(
                        id="lost",
                        key_id=key_id,
                        url="https://a.example/",
                        event="completed",
                        created_at=utcnow() - timedelta(days=2),
                    ),
                    CallbackDelivery(id="recent", key_id=key_id, url="https://a.example/", event="completed"),
                ]
            )
        svc.housekeeping()
        with svc.db() as session:
            lost, recent = session.get(CallbackDelivery, "lost"), session.get(CallbackDelivery, "recent")
            assert (lost.status, recent.status) == ("dropped", "queued") and "process" in lost.last_error
    finally:
        svc.close()
