"""API keys and credits: the CLI commands, and atomic reservation under concurrent approvals on
SQLite and PostgreSQL (127.0.0.1:5432, database `test`, a throw-away schema per run)."""

from __future__ import annotations

import threading
import uuid

from click.testing import CliRunner
from sqlalchemy import select

from _service_helpers import settings_for
from veil.cli import main
from veil.db.models import ApiKey, Job
from veil.jobs.credits import InsufficientCredits, ledger
from veil.jobs.keys import authenticate, create_key, get_key, hash_key, revoke_key
from veil.jobs.service import JobService


def test_cli_keys_and_credits(tmp_path):
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(main, ["keys", "create", "--credits", "7", "--name", "ci", *data])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert len(key) == 36 and uuid.UUID(key)
    assert key not in (tmp_path / "veil.db").read_bytes().decode(errors="ignore")  # only the hash is stored
    listed = runner.invoke(main, ["keys", "list", *data]).output
    assert " 7 " in listed and "active" in listed and "ci" in listed
    assert runner.invoke(main, ["credits", "add", key, "5", *data]).output.strip() == "balance: 12"
    assert runner.invoke(main, ["keys", "revoke", key, *data]).exit_code == 0
    assert "revoked" in runner.invoke(main, ["keys", "list", *data]).output
    missing = runner.invoke(main, ["credits", "add", str(uuid.uuid4()), "5", *data])
    assert missing.exit_code != 0 and "no API key" in missing.output


def test_only_the_hash_is_stored_and_revoked_keys_fail(tmp_path):
    from veil.jobs.service import build_service

    svc = build_service(settings_for(tmp_path))
    try:
        key, row = create_key(svc.db, 3)
        other, _ = create_key(svc.db, 3)
        assert row.key_hash == hash_key(key) and authenticate(svc.db, key).id == row.id
        with svc.db() as session:
            assert key not in str(session.execute(select(*ApiKey.__table__.columns)).all())  # only its hash
        assert authenticate(svc.db, key.upper()) is None and authenticate(svc.db, None) is None
        assert revoke_key(svc.db, key).revoked
        assert authenticate(svc.db, key) is None and authenticate(svc.db, other) is not None
    finally:
        svc.close()


def _priced_job(svc: JobService, key_id: str, cost: int) -> str:
    with svc.db.begin() as session:
        job = Job(
            key_id=key_id,
            file_name="a.jpg",
            input_blob="x",
            status="awaiting_approval",
            total_cost=cost,
            model_config_json={},
        )
        session.add(job)
    return job.id


def _race(calls) -> list:
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_approvals_never_overdraw(service):
    _, row = create_key(service.db, credits=5)
    jobs = [_priced_job(service, row.id, 5) for _ in range(6)]
    results = _race([lambda j=j: service.approve(row.id, j) for j in jobs])
    assert results.count("approved") == 1, results
    assert all(isinstance(r, InsufficientCredits) for r in results if r != "approved"), results
    assert get_key(service.db, row.id).credits == 0
    assert [e.kind for e in ledger(service.db, key_id=row.id)] == ["admin_add", "reserve"]
    states = sorted(service.get_job(j).status for j in jobs)
    assert states == ["awaiting_approval"] * 5 + ["queued"]


def test_concurrent_approvals_of_one_job_charge_once(service):
    _, row = create_key(service.db, credits=20)
    job_id = _priced_job(service, row.id, 5)
    results = _race([lambda: service.approve(row.id, job_id) for _ in range(5)])
    assert sorted(results) == ["already"] * 4 + ["approved"], results
    assert get_key(service.db, row.id).credits == 15


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout_and_migrations_are_idempotent(tmp_path):
    from alembic.script import ScriptDirectory

    from veil.db.session import MIGRATIONS, open_database

    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine, _ = open_database(url)
    engine2, _ = open_database(url)  # a second start-up: `upgrade head` again is a no-op
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()  # exactly one head, else this raises
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head
    engine.dispose()
    engine2.dispose()
