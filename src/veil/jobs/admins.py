"""Admin accounts for the web panel: argon2id password hashes, back-off after failed sign-ins, and
server-side sessions (the browser holds a random token; only its sha256 is stored, so signing out
or deleting an account ends the session everywhere)."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import AdminSession, AdminUser, utcnow

MIN_PASSWORD_LENGTH = 10
FREE_FAILURES = 2  # wrong passwords allowed before the back-off starts
MAX_LOCK = timedelta(minutes=15)
_hasher = PasswordHasher()  # argon2id, 64 MiB, 3 passes (RFC 9106 second recommendation)
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))  # verified against for unknown emails: same timing


class _UnknownEmails:
    """Failed sign-ins for emails without an account, in memory (the newest 10 000), so they back off too."""

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[str, tuple[int, datetime | None]] = OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def get(self, email: str, default: tuple[int, datetime | None]) -> tuple[int, datetime | None]:
        with self._lock:
            return self._seen.get(email, default)

    def remember(self, email: str, state: tuple[int, datetime | None]) -> None:
        with self._lock:
            self._seen[email] = state
            self._seen.move_to_end(email)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


_unknown = _UnknownEmails()


class AdminError(ValueError):
    """A bad email or password on account creation; the message says which."""


class SignInLocked(Exception):
    def __init__(self, seconds: int):
        super().__init__(f"too many failed sign-ins; try again in {seconds} s")
        self.seconds = seconds


@dataclass(frozen=True)
class SignedIn:
    admin: AdminUser
    token: str  # goes into the cookie; never stored


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _normal_email(email: str) -> str:
    return email.strip().lower()


def create_admin(db: sessionmaker[Session], email: str, password: str) -> AdminUser:
    """A new admin account; AdminError when the email is taken or malformed or the password too short."""
    email = _normal_email(email)
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise AdminError(f"not an email address: {email!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    with db.begin() as session:
        if session.scalar(select(AdminUser.id).where(AdminUser.email == email)):
            raise AdminError(f"an admin account for {email} exists already")
        row = AdminUser(email=email, password_hash=hash_password(password))
        session.add(row)
    return row


def ensure_admin(db: sessionmaker[Session], email: str, password: str) -> bool:
    """Create the account unless it exists (start-up from VEIL_ADMIN_EMAIL/PASSWORD). True if created."""
    with db() as session:
        if session.scalar(select(AdminUser.id).where(AdminUser.email == _normal_email(email))):
            return False
    create_admin(db, email, password)
    return True


def _lock_for(failures: int) -> timedelta:
    """0 for the first FREE_FAILURES failures, then 5 s, 10 s, 20 s, ... up to 15 minutes."""
    if failures <= FREE_FAILURES:
        return timedelta(0)
    return min(timedelta(seconds=5 * 2 ** min(failures - FREE_FAILURES - 1, 10)), MAX_LOCK)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def sign_in(db: sessionmaker[Session], email: str, password: str, session_hours: float) -> SignedIn | None:
    """A new session for the right email and password; None when wrong; SignInLocked while backing off
    (even with the right password, so guessing gains nothing from the lock). Unknown emails back off the
    same way, so neither the answer nor the lock tells whether an account exists."""
    now, email = utcnow(), _normal_email(email)
    with db() as session:
        admin = session.scalar(select(AdminUser).where(AdminUser.email == email))
    failures, locked_until = ((admin.failed_signins, _aware(admin.locked_until)) if admin is not None
                              else _unknown.get(email, (0, None)))
    if locked_until is not None and locked_until > now:
        raise SignInLocked(max(1, round((locked_until - now).total_seconds())))
    if admin is None or not verify_password(admin.password_hash, password):
        if admin is None:
            verify_password(_DUMMY_HASH, password)  # the same work as for an account
        lock = _lock_for(failures + 1)
        if admin is not None:
            with db.begin() as session:
                session.execute(update(AdminUser).where(AdminUser.id == admin.id).values(
                    failed_signins=AdminUser.failed_signins + 1, locked_until=now + lock if lock else None))
        else:
            _unknown.remember(email, (failures + 1, now + lock if lock else None))
        if lock:
            raise SignInLocked(round(lock.total_seconds()))
        return None
    token = secrets.token_urlsafe(32)
    with db.begin() as session:
        session.execute(update(AdminUser).where(AdminUser.id == admin.id).values(
            failed_signins=0, locked_until=None, last_signin_at=now))
        session.execute(delete(AdminSession).where(AdminSession.expires_at < now))
        session.add(AdminSession(token_hash=_token_hash(token), admin_id=admin.id,
                                 expires_at=now + timedelta(hours=session_hours)))
        if _hasher.check_needs_rehash(admin.password_hash):
            session.execute(update(AdminUser).where(AdminUser.id == admin.id)
                            .values(password_hash=hash_password(password)))
    return SignedIn(admin=admin, token=token)


def session_admin(db: sessionmaker[Session], token: str | None) -> AdminUser | None:
    """The admin a session cookie belongs to, or None (missing, unknown, expired)."""
    if not token:
        return None
    with db() as session:
        row = session.scalar(select(AdminUser).join(AdminSession, AdminSession.admin_id == AdminUser.id).where(
            AdminSession.token_hash == _token_hash(token), AdminSession.expires_at > utcnow()))
    return row


def sign_out(db: sessionmaker[Session], token: str | None) -> None:
    if token:
        with db.begin() as session:
            session.execute(delete(AdminSession).where(AdminSession.token_hash == _token_hash(token)))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
