"""Admin panel, below the browser: argon2 password hashing, sign-in back-off, server-side sessions, CSRF
tokens, cookie flags and the panel's refusals over HTTP (FastAPI's TestClient), the ledger's actor, and
the figures behind the pages (usage per day, job filters, key last use) on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from _service_helpers import settings_for
from veil.api.app import create_app
from veil.api.panel import security
from veil.cli import main
from veil.db.models import AdminSession, AdminUser, CreditEntry, utcnow
from veil.jobs import admins, reports
from veil.jobs.keys import create_key

PASSWORD = "correct horse battery"


@pytest.fixture
def db(service):
    """SQLite, then PostgreSQL (conftest's `service`)."""
    return service.db


def test_passwords_are_argon2id_salted_and_verified():
    first, second = admins.hash_password(PASSWORD), admins.hash_password(PASSWORD)
    assert first.startswith("$argon2id$") and PASSWORD not in first
    assert first != second  # salted
    assert admins.verify_password(first, PASSWORD)
    assert not admins.verify_password(first, PASSWORD + "x")
    assert not admins.verify_password("not a hash", PASSWORD)


def test_account_rules(db):
    admins.create_admin(db, "Ops@Example.com", PASSWORD)
    with pytest.raises(admins.AdminError, match="exists already"):
        admins.create_admin(db, "ops@example.com", PASSWORD)
    with pytest.raises(admins.AdminError, match="at least 10"):
        admins.create_admin(db, "b@example.com", "short")
    with pytest.raises(admins.AdminError, match="not an email"):
        admins.create_admin(db, "nobody", PASSWORD)
    assert not admins.ensure_admin(db, "OPS@example.com", PASSWORD)
    assert admins.ensure_admin(db, "c@example.com", PASSWORD)


def test_cli_admin_create_prompts_for_the_password(tmp_path):
    result = CliRunner().invoke(
        main, ["admin", "create", "ops@example.com", "--data-dir", str(tmp_path)], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "created admin ops@example.com" in result.output
    assert PASSWORD not in (tmp_path / "veil.db").read_bytes().decode(errors="ignore")


@pytest.fixture(autouse=True)
def fresh_throttle(monkeypatch):
    """Failed sign-ins are counted in the process: each test starts with none."""
    monkeypatch.setattr(admins, "_throttle", admins._Throttle())


@pytest.fixture
def clock(monkeypatch):
    """Sign-in time that a test moves on by hand: `clock.advance(seconds)`."""

    class Clock:
        now = utcnow()

        def advance(self, seconds: float) -> None:
            self.now += timedelta(seconds=seconds)

    clock = Clock()
    monkeypatch.setattr(admins, "utcnow", lambda: clock.now)
    return clock


def test_failed_sign_ins_back_off_even_for_the_right_password(db, clock):
    admins.create_admin(db, "ops@example.com", PASSWORD)
    for _ in range(admins.FREE_FAILURES):
        assert admins.sign_in(db, "ops@example.com", "wrong", 1) is None
    with pytest.raises(admins.SignInLocked) as locked:
        admins.sign_in(db, "ops@example.com", "wrong", 1)
    assert locked.value.seconds == 5
    with pytest.raises(admins.SignInLocked):  # while locked, the right password is refused too
        admins.sign_in(db, "ops@example.com", PASSWORD, 1)
    clock.advance(6)  # the lock runs out
    with pytest.raises(admins.SignInLocked) as again:  # the next failure doubles the wait
        admins.sign_in(db, "ops@example.com", "wrong", 1)
    assert again.value.seconds == 10
    clock.advance(11)
    assert admins.sign_in(db, "ops@example.com", PASSWORD, 1) is not None
    with db() as session:  # success resets the count
        assert session.scalar(select(AdminUser.failed_signins)) == 0
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(admins.FREE_FAILURES):  # an unknown email is answered and locked the same way
        assert admins.sign_in(db, nobody, PASSWORD, 1) is None
    with pytest.raises(admins.SignInLocked) as unknown:
        admins.sign_in(db, nobody.upper(), PASSWORD, 1)
    assert unknown.value.seconds == 5


def test_sessions_are_stored_hashed_expire_and_end_at_sign_out(db):
    admins.create_admin(db, "ops@example.com", PASSWORD)
    signed = admins.sign_in(db, "ops@example.com", PASSWORD, session_hours=1)
    assert admins.session_admin(db, signed.token).email == "ops@example.com"
    with db() as session:
        stored = session.scalar(select(AdminSession.token_hash))
    assert stored != signed.token and len(stored) == 64
    assert admins.session_admin(db, signed.token + "x") is None and admins.session_admin(db, None) is None
    admins.sign_out(db, signed.token)
    assert admins.session_admin(db, signed.token) is None
    expiring = admins.sign_in(db, "ops@example.com", PASSWORD, session_hours=1)
    with db.begin() as session:
        session.execute(update(AdminSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert admins.session_admin(db, expiring.token) is None


def test_csrf_token_is_bound_to_its_session_and_secret():
    token = security.csrf_token("secret", "session-a")
    assert security.csrf_valid("secret", "session-a", token)
    assert not security.csrf_valid("secret", "session-b", token)
    assert not security.csrf_valid("other-secret", "session-a", token)
    assert not security.csrf_valid("secret", "session-a", None)
    assert not security.csrf_valid("secret", None, token)


# ----------------------------------------------------------------------------- over HTTP
def _csrf(html: str, action: str | None = None) -> str:
    """The CSRF token of the form posting to `action` (any form's when None)."""
    form = re.search(rf'<form[^>]*action="{action}"[^>]*>(.*?)</form>', html, re.S).group(1) if action else html
    return re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)


def _panel(tmp_path, scheme: str = "http") -> TestClient:
    app = create_app(settings_for(tmp_path, admin_email="ops@example.com", admin_password=PASSWORD))
    return TestClient(app, base_url=f"{scheme}://127.0.0.1")


def _sign_in(client: TestClient, password: str = PASSWORD, next_page: str = "/admin/keys"):
    page = client.get("/admin/login")
    return client.post(
        "/admin/login",
        follow_redirects=False,
        data={"csrf_token": _csrf(page.text), "email": "ops@example.com", "password": password, "next": next_page},
    )


def test_panel_requires_sign_in_and_refuses_forms_without_csrf(tmp_path):
    with _panel(tmp_path) as client:
        assert client.get("/admin/keys", follow_redirects=False).headers["location"] == "/admin/login?next=/admin/keys"
        refused = client.post("/admin/login", data={"email": "ops@example.com", "password": PASSWORD})
        assert refused.status_code == 403  # the sign-in form needs its token too
        wrong = _sign_in(client, "wrong password")
        assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
        signed = _sign_in(client, next_page="https://evil.example/")
        assert signed.status_code == 303 and signed.headers["location"] == "/admin/keys"  # no open redirect
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith(security.SESSION_COOKIE))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/admin" in cookie
        assert "Secure" not in cookie  # plain http on loopback
        keys_page = client.get("/admin/keys")
        assert keys_page.status_code == 200
        for token in (None, "0" * 64):
            data = {"name": "sneaky", "credits": "5", **({"csrf_token": token} if token else {})}
            assert client.post("/admin/keys", data=data).status_code == 403
        assert "sneaky" not in client.get("/admin/keys").text
        made = client.post(
            "/admin/keys", data={"csrf_token": _csrf(keys_page.text, "/admin/keys"), "name": "app", "credits": "5"}
        )
        assert made.status_code == 200 and re.search(r'id="new-key">[0-9a-f-]{36}<', made.text)
        client.post("/admin/logout", data={"csrf_token": _csrf(keys_page.text)})
        assert client.get("/admin/keys", follow_redirects=False).status_code == 303


def test_session_cookie_is_secure_behind_https(tmp_path):
    with _panel(tmp_path, scheme="https") as client:
        cookie = next(
            c for c in _sign_in(client).headers.get_list("set-cookie") if c.startswith(security.SESSION_COOKIE)
        )
        assert "Secure" in cookie


def test_credit_changes_record_who_made_them(tmp_path):
    with _panel(tmp_path) as client:
        _sign_in(client)
        _, row = create_key(client.app.state.service.db, 0, "app", actor="cli")
        page = client.get(f"/admin/keys/{row.id}")
        client.post(
            f"/admin/keys/{row.id}/credits",
            data={
                "csrf_token": _csrf(page.text, f"/admin/keys/{row.id}/credits"),
                "amount": "25",
                "reason": "invoice 41",
            },
        )
        missing_reason = client.post(
            f"/admin/keys/{row.id}/credits", data={"csrf_token": _csrf(page.text), "amount": "5", "reason": " "}
        )
        assert missing_reason.status_code == 422
        with client.app.state.service.db() as session:
            entries = list(session.scalars(select(CreditEntry).where(CreditEntry.key_id == row.id)))
        assert [(e.amount, e.reason, e.actor) for e in entries] == [(25, "invoice 41", "admin:ops@example.com")]
        assert "invoice 41" in client.get(f"/admin/keys/{row.id}").text
        too_much = client.post(
            f"/admin/keys/{row.id}/credits",  # issue 9: 2^63 - 25 would leave BIGINT
            data={"csrf_token": _csrf(page.text), "amount": str(2**63 - 25), "reason": "x"},
        )
        assert too_much.status_code == 409 and "exceed the largest balance" in too_much.text
        page = client.get("/admin/keys")
        huge_key = client.post(
            "/admin/keys", data={"csrf_token": _csrf(page.text, "/admin/keys"), "name": "huge", "credits": str(2**63)}
        )
        assert huge_key.status_code == 422 and "amount must be between" in huge_key.text


def test_usage_counts_spent_credits_per_day(db):
    from veil.jobs import credits

    _, row = create_key(db, 10, "app")
    with db.begin() as session:
        credits.reserve(session, row.id, "job-1", 4)
        credits.refund(session, row.id, "job-1", 1, "test")
    days = reports.usage_by_day(db, 7, row.id)
    assert len(days) == 7 and days[-1].credits == 3 and sum(d.credits for d in days) == 3
    assert reports.key_rows(db)[0].spent == 3
    assert reports.find_jobs(db, reports.JobFilter(kind="video", since=days[0].day), 10, 0) == ([], 0)


def test_key_use_is_recorded_at_most_once_a_minute(db):
    from veil.jobs.keys import authenticate, get_key

    key, row = create_key(db, 0, "app")
    assert row.last_used_at is None
    authenticate(db, key)
    first = get_key(db, row.id).last_used_at
    assert first is not None
    authenticate(db, key)
    assert get_key(db, row.id).last_used_at == first  # no write per request


def test_job_filters(db):
    from veil.db.models import Job

    _, row = create_key(db, 0, "app")
    now = utcnow()
    with db.begin() as session:
        for name, status, age in (("a.JPG", "completed", 0), ("b.mp4", "failed", 0), ("c.tar.gz", "completed", 3)):
            session.add(
                Job(key_id=row.id, file_name=name, input_blob=name, status=status, created_at=now - timedelta(days=age))
            )

    def names(**where) -> list[str]:
        jobs, total = reports.find_jobs(db, reports.JobFilter(**where), 10, 0)
        assert total == len(jobs)
        return sorted(job.file_name for job in jobs)

    assert names() == ["a.JPG", "b.mp4", "c.tar.gz"]
    assert names(kind="image") == ["a.JPG"] and names(kind="video") == ["b.mp4"]
    assert names(kind="archive") == ["c.tar.gz"]
    assert names(status="completed") == ["a.JPG", "c.tar.gz"]
    assert names(since=(now - timedelta(days=1)).date()) == ["a.JPG", "b.mp4"]
    assert names(until=(now - timedelta(days=2)).date()) == ["c.tar.gz"]
    assert names(key_id="someone else") == []
