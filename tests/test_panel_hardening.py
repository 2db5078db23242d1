"""Issue 18, the panel as an outsider and a signed-in admin would attack it: query parameters out of bounds,
download names, security headers, and sign-in traffic that must not stall the API or lock the owner out."""

from __future__ import annotations

import os
import re
import threading

import pytest
import requests
from fastapi.testclient import TestClient

from _service_helpers import new_key, settings_for
from test_admin_auth import PASSWORD, _csrf, _panel, _sign_in, clock, fresh_throttle  # noqa: F401 (fixtures)
from veil.api.app import create_app
from veil.db.models import Job
from veil.jobs import admins
from veil.jobs.keys import create_key
from veil.storage.testing import serve_app


def test_query_parameters_are_bounded_and_answered_with_a_page(tmp_path):
    """Finding 4: these were 500s (integer and date overflow, a header that cannot be encoded)."""
    with _panel(tmp_path) as client:
        assert client.get("/admin/jobs?page=1000000000000000000000", follow_redirects=False).status_code == 303
        _sign_in(client)
        for address, name in (
            ("/admin/jobs?page=1000000000000000000000", "page"),
            ("/admin/deliveries?page=1000000000000000000000", "page"),
            ("/admin/jobs?until=9999-12-31", "until"),
            ("/admin/jobs?since=10000-01-01", "since"),
            ("/admin/usage.csv?key=中文字", "key"),
            ("/admin/usage.csv?key=a%0d%0aSet-Cookie:%20x=1", "key"),
            ("/admin/usage?days=100000000000000000000", "days"),
        ):
            r = client.get(address)
            assert r.status_code == 422 and "Invalid address" in r.text and name in r.text, (address, r.text)
            assert r.headers["content-type"].startswith("text/html")
        assert client.get("/admin/jobs?until=9999-12-30&since=&page=3").status_code == 200
        assert client.get("/admin/jobs?status=nonsense&kind=").status_code == 200  # unknown choices show all
        _, row = create_key(client.app.state.service.db, 0, "app")
        csv = client.get(f"/admin/usage.csv?key={row.id}&days=7")
        assert csv.status_code == 200 and csv.text.startswith("day,credits_spent")
        assert csv.headers["content-disposition"] == f'attachment; filename="veil-usage-{row.id[:8]}-7d.csv"'


def test_bad_panel_parameters_reach_no_handler_without_a_session(tmp_path):
    with TestClient(_panel(tmp_path).app) as client:
        r = client.get("/admin/usage.csv?key=中文字", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


def test_panel_pages_send_security_headers_and_hold_no_inline_script_or_style(tmp_path):
    """Finding 8: a CSP the panel's own files pass (no inline script or style), no framing, no sniffing."""
    with _panel(tmp_path) as client:
        pages = [client.get("/admin/login")]
        _sign_in(client)
        _, key = create_key(client.app.state.service.db, 0, "app")
        with client.app.state.service.db.begin() as session:  # a row with a progress bar
            session.add(Job(key_id=key.id, file_name="a.jpg", input_blob="a.jpg", status="running"))
        pages += [client.get(f"/admin/{name}") for name in ("keys", "jobs", "usage", "deliveries", "system", "nope")]
        pages += [client.get("/admin/static/admin.js"), client.get("/admin/jobs?page=0")]
        for page in pages:
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp and "'unsafe-inline'" not in csp
            assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            if page.headers["content-type"].startswith("text/html"):
                scripts = re.findall(r"<script([^>]*)>", page.text)
                assert all("src=" in attrs or 'type="application/json"' in attrs for attrs in scripts), scripts
                assert not re.search(r"\sstyle=|<style|\son[a-z]+=", page.text)
        assert "content-security-policy" not in client.get("/docs").headers  # Swagger UI has its own inline script


# ------------------------------------------------------------------ sign-in traffic (findings 3 and 6)
def test_an_outsider_cannot_lock_the_owner_out_but_guessing_stays_slow(service, clock):
    """Finding 6: failures count per email and address, per address, and per email over a window."""
    db, owner, outsider = service.db, "198.51.100.7", "203.0.113.9"
    admins.create_admin(db, "ops@example.com", PASSWORD)
    waits = []
    for _ in range(12):  # the outsider keeps guessing, each time the lock has run out
        try:
            admins.sign_in(db, "ops@example.com", "guess", 1, source=outsider)
        except admins.SignInLocked as locked:
            waits.append(locked.seconds)
            clock.advance(locked.seconds)
    assert waits[:4] == [5, 10, 20, 40]  # the back-off still doubles for the guesser
    with pytest.raises(admins.SignInLocked):
        admins.sign_in(db, "ops@example.com", "guess", 1, source=outsider)
    with pytest.raises(admins.SignInLocked):  # and holds against the right password from there
        admins.sign_in(db, "ops@example.com", PASSWORD, 1, source=outsider)
    assert admins.sign_in(db, "ops@example.com", PASSWORD, 1, source=owner) is not None  # was SignInLocked
    for n in range(admins.SOURCE_FREE_FAILURES):  # one address trying many emails backs off too
        assert admins.sign_in(db, f"user{n}@example.com", "guess", 1, source="192.0.2.1") is None
    with pytest.raises(admins.SignInLocked):
        admins.sign_in(db, "another@example.com", "guess", 1, source="192.0.2.1")
    clock.advance(admins.ACCOUNT_WINDOW.total_seconds())  # the outsider's failures leave the window
    for n in range(admins.ACCOUNT_WINDOW_FAILURES - 1):  # a distributed guess: many addresses, one email
        assert admins.sign_in(db, "ops@example.com", "guess", 1, source=f"10.0.{n}.1") is None
    with pytest.raises(admins.SignInLocked):  # locks the account for every address it never signed in from
        admins.sign_in(db, "ops@example.com", "guess", 1, source="10.1.0.1")
    with pytest.raises(admins.SignInLocked):
        admins.sign_in(db, "ops@example.com", PASSWORD, 1, source="10.2.0.1")
    # but not for the owner's address, which signed in above (tests/test_signin_lockout.py)
    assert admins.sign_in(db, "ops@example.com", PASSWORD, 1, source=owner) is not None
    clock.advance(admins.ACCOUNT_WINDOW.total_seconds())
    assert admins.sign_in(db, "ops@example.com", PASSWORD, 1, source="10.2.0.1") is not None
    assert admins.source_key("2001:db8::1") == admins.source_key("2001:db8::ffff") == "2001:db8::/64"


def test_the_panel_counts_failures_by_the_client_address(tmp_path):
    app = create_app(settings_for(tmp_path, admin_email="ops@example.com", admin_password=PASSWORD))
    with TestClient(app, client=("203.0.113.9", 4000)) as outsider:
        owner = TestClient(app, client=("198.51.100.7", 4000))  # the same app, its lifespan running already
        statuses = [_sign_in(outsider, "guess").status_code for _ in range(3)]
        assert statuses == [401, 401, 429]
        assert _sign_in(owner).status_code == 303


@pytest.fixture
def slow_checks(monkeypatch):
    """argon2's verification made a blocking wait on state["release"] (a threading.Event), counting how many
    run at once; state["entered"] is set when the first check starts."""
    state = {"now": 0, "most": 0, "nice": set(), "entered": threading.Event(), "release": threading.Event()}
    lock = threading.Lock()

    def slow(password_hash: str, password: str) -> bool:
        thread, main = threading.get_native_id(), os.getpid()
        state["nice"].add(os.getpriority(os.PRIO_PROCESS, thread) - os.getpriority(os.PRIO_PROCESS, main))
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        state["entered"].set()
        state["release"].wait(timeout=120)  # blocks its thread, as argon2 does, until the test releases it
        with lock:
            state["now"] -= 1
        return False

    monkeypatch.setattr(admins, "verify_password", slow)
    yield state
    state["release"].set()  # never leave a server thread blocked


def _signin_post(base: str, address: str, results: list) -> None:
    with requests.Session() as http:
        http.headers["X-Forwarded-For"] = address  # uvicorn trusts it from loopback: the client's address
        page = http.get(f"{base}/admin/login", timeout=30)
        results.append(
            http.post(
                f"{base}/admin/login",
                timeout=60,
                allow_redirects=False,
                data={"csrf_token": _csrf(page.text), "email": f"guess-{address}@example.com", "password": "x"},
            ).status_code
        )


def test_sign_ins_run_off_the_event_loop_and_are_bounded(tmp_path, slow_checks):
    """Finding 3: the password check ran on the event loop, so every request waited for it."""
    app = create_app(settings_for(tmp_path))
    with serve_app(app) as base:
        key = new_key(app.state.service)
        results: list[int] = []
        posts = [threading.Thread(target=_signin_post, args=(base, f"10.0.0.{n}", results)) for n in range(3)]
        posts += [threading.Thread(target=_signin_post, args=(base, "10.0.0.1", results))]  # the same address
        for thread in posts:
            thread.start()
        try:
            assert slow_checks["entered"].wait(timeout=60), "no password check started"
            # A check is held (its thread blocked): on the event loop it would stall every request until the
            # release below, so these would time out instead of being answered.
            statuses = [
                requests.get(f"{base}/v1/jobs", headers={"access_token": key}, timeout=20).status_code
                for _ in range(10)
            ]
            still_held = slow_checks["now"]
        finally:
            slow_checks["release"].set()
        for thread in posts:
            thread.join()
    assert statuses == [200] * 10
    assert still_held == 1  # every answer came while the check was still running
    assert slow_checks["most"] == 1  # VEIL_ADMIN_SIGNIN_CONCURRENCY
    assert slow_checks["nice"] == {10}  # below the API's threads
    assert sorted(results) == [401, 401, 401, 429]  # a second sign-in from one address while one runs: 429


def test_password_checks_are_rate_limited_per_address_and_overall():
    """Beyond its rates a sign-in is refused before any password check (argon2id's CPU and memory traffic slow
    every other request on a small machine): per source address, and for the whole server."""
    import asyncio

    from veil.api.panel.gate import SignInBusy, SignInGate

    checks: list[str] = []
    gate = SignInGate(1, per_source="2/minute", overall="3/minute")

    async def attempt(source: str) -> str:
        try:
            return await gate.run(source, lambda: checks.append(source) or "checked")
        except SignInBusy:
            return "refused"

    async def scenario() -> list[str]:
        return [await attempt(source) for source in ("a", "a", "a", "b", "c")]

    assert asyncio.run(scenario()) == ["checked", "checked", "refused", "checked", "refused"]
    assert checks == ["a", "a", "b"]  # the refused ones never reached the check
