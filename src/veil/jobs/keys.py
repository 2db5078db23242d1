"""API keys: 36-character UUIDs handed out once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import ApiKey, utcnow
from .credits import change_balance

_LAST_USED_STEP = timedelta(minutes=1)


class KeyNotFound(LookupError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.strip().encode()).hexdigest()


def create_key(
    db: sessionmaker[Session], credits: int = 0, name: str = "", actor: str = "system"
) -> tuple[str, ApiKey]:
    """Create a key with an opening balance; returns (the key itself, its row). The key is not stored.
    One transaction: a refused balance leaves no key behind."""
    key = str(uuid.uuid4())
    with db.begin() as session:
        row = ApiKey(key_hash=hash_key(key), name=name, credits=0)
        session.add(row)
        session.flush()
        if credits:
            change_balance(session, row.id, credits, reason="opening balance", actor=actor)
    return key, get_key(db, row.id)


def authenticate(db: sessionmaker[Session], key: str | None) -> ApiKey | None:
    """The active key row for a presented key, or None (missing, malformed, unknown or revoked)."""
    if not key or len(key.strip()) != 36:
        return None
    with db() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked:
        return None
    now, last = utcnow(), row.last_used_at
    if last is None or now - last.replace(tzinfo=UTC) > _LAST_USED_STEP:  # SQLite: naive UTC
        with db.begin() as session:  # at most one write a minute per key, not one per request
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return row


def find_key(db: sessionmaker[Session], key_or_id: str) -> ApiKey:
    """A key row by the key itself or by its id (the id is what `veil keys list` shows)."""
    with db() as session:
        row = session.scalar(
            select(ApiKey).where(or_(ApiKey.id == key_or_id.strip(), ApiKey.key_hash == hash_key(key_or_id)))
        )
    if row is None:
        raise KeyNotFound(f"no API key matches {key_or_id!r}")
    return row


def get_key(db: sessionmaker[Session], key_id: str) -> ApiKey:
    with db() as session:
        row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFound(f"no API key with id {key_id}")
    return row


def list_keys(db: sessionmaker[Session]) -> list[ApiKey]:
    with db() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(db: sessionmaker[Session], key_or_id: str) -> ApiKey:
    row = find_key(db, key_or_id)
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked=True))
    return get_key(db, row.id)


def rename_key(db: sessionmaker[Session], key_id: str, name: str) -> ApiKey:
    get_key(db, key_id)
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(name=name.strip()[:200]))
    return get_key(db, key_id)
