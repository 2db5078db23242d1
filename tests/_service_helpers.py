"""Helpers shared by the service tests (H6): an app on a temp data dir, keys, seed-style uploads."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from veil.jobs.keys import create_key
from veil.settings import Settings

PG_SCHEMA_PREFIX = "veil_t_"


def settings_for(tmp: Path, **overrides) -> Settings:
    """Settings on a temp data dir: SQLite there, or, when VEIL_TEST_DATABASE_URL names a PostgreSQL
    server (scripts/test.sh runs the service tests a second time so), a fresh schema of that database."""
    values = dict(
        data_dir=tmp,
        worker="none",
        port=8000,
        storage_key=base64.b64encode(b"k" * 32).decode(),
        callback_secret="test-secret",
        database_url=database_url_for(tmp),
    )
    values.update(overrides)
    return Settings(**values)


def database_url_for(tmp: Path, server: str | None = None) -> str | None:
    """A PostgreSQL URL whose search_path is a schema of its own for `tmp` (created on first use), on
    `server` or VEIL_TEST_DATABASE_URL; None (SQLite under the data dir) when neither is given."""
    server = server or os.environ.get("VEIL_TEST_DATABASE_URL")
    if not server:
        return None
    from sqlalchemy import create_engine, text

    schema = PG_SCHEMA_PREFIX + hashlib.sha1(str(tmp.resolve()).encode()).hexdigest()[:20]
    engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()
    return f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"


def assert_charged_once(db, job_id: str, opening: int) -> None:
    """The job's key was debited once, by the job's cost (at least 1), and never refunded: the key's ledger
    holds one entry for the job, its reserve, and the key's balance is `opening` less the cost (a second
    debit shows in one or the other). `db` is a session factory or a database URL."""
    from veil.db.models import ApiKey, Job
    from veil.db.session import open_database
    from veil.jobs.credits import ledger

    engine, db = open_database(db) if isinstance(db, str) else (None, db)
    try:
        with db() as session:
            job = session.get(Job, job_id)
            balance = session.get(ApiKey, job.key_id).credits
        assert job.total_cost >= 1
        entries = [(e.kind, e.amount) for e in ledger(db, key_id=job.key_id) if e.job_id == job_id]
        assert entries == [("reserve", -job.total_cost)] and balance == opening - job.total_cost, (entries, balance)
    finally:
        if engine is not None:
            engine.dispose()


def drop_test_schemas() -> None:
    """Drop the schemas database_url_for made (end of a PostgreSQL test session)."""
    server = os.environ.get("VEIL_TEST_DATABASE_URL")
    if not server:
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for (name,) in conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": PG_SCHEMA_PREFIX + "%"}
            ):
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        engine.dispose()


@contextmanager
def app_client(tmp: Path, **overrides) -> Iterator:
    """A TestClient on a fresh app (worker off, admin token `admin-secret`); `.svc` is its JobService."""
    from fastapi.testclient import TestClient

    from veil.api.app import create_app

    app = create_app(settings_for(tmp, **{"admin_token": "admin-secret", **overrides}))
    with TestClient(app, raise_server_exceptions=False) as http:
        http.svc = app.state.service
        yield http


def new_key(service, credits: int = 100, name: str = "") -> str:
    return create_key(service.db, credits, name)[0]


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def padded_jpeg(size: int, seed: int = 0) -> bytes:
    """A valid JPEG of exactly `size` bytes: a small image with comment (COM) segments after SOI."""
    image = jpeg_bytes(seed=seed)
    pad = size - len(image)
    assert pad >= 4, f"{size} bytes is too small for a padded JPEG"
    segments = []
    while pad > 0:
        body = min(pad - 4, 65533)
        if 0 < pad - 4 - body < 4:  # leave room for a whole last segment
            body -= 4
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"\0" * body)
        pad -= body + 4
    return image[:2] + b"".join(segments) + image[2:]


def seed_upload(http, session_uri: str, data: bytes, chunk: int = 4 * 1024 * 1024) -> None:
    """The seed client's upload: Put Block with urlsafe 4-byte ids, then Put Block List of <Latest>."""
    ids = []
    for n, start in enumerate(range(0, len(data), chunk)):
        block_id = base64.urlsafe_b64encode(n.to_bytes(4, "big")).decode()
        r = http.put(session_uri + "&comp=block&blockid=" + block_id, content=data[start : start + chunk])
        assert r.status_code == 201, r.text
        ids.append(block_id)
    xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
    r = http.put(session_uri + "&comp=blocklist", content=xml)
    assert r.status_code == 201, r.text
