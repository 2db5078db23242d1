"""Accounts for the web panel: argon2id password hashes, back-off after failed sign-ins, and
server-side sessions (the browser holds a random token; only its sha256 is stored, so signing out
or deleting an account ends the session everywhere). Each account has a role (`ROLES`: admin, reviewer,
viewer; the panel enforces them); reviewers' soft claims on jobs and the review log live here too.

Failed sign-ins are throttled three ways, so that guessing stays slow but an outsider cannot lock the owner
out from another address (issue 18): per email *and source address* (the owner's own address keeps its own
count), per source address over all emails (one address trying many accounts), and per email over all
addresses in a sliding window (a distributed guess; more failures than one address can make under its
back-off). An address the account has signed in from before (its last `KNOWN_SOURCES`) is exempt from the
window, so outsiders guessing from elsewhere cannot lock the owner out of their usual address; its own two
counts still apply. The counts and known addresses live in the API server's memory (the newest 10 000 of
each kind)."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..db.models import AdminSession, AdminUser, Job, ReviewClaim, ReviewEntry, utcnow

MIN_PASSWORD_LENGTH = 10
FREE_FAILURES = 2  # wrong passwords for one email from one address before the back-off starts
SOURCE_FREE_FAILURES = 10  # wrong passwords from one address, any emails, before the address backs off
ACCOUNT_WINDOW, ACCOUNT_WINDOW_FAILURES = timedelta(minutes=15), 30  # one email, all addresses
KNOWN_SOURCES = 5  # addresses per email remembered after a successful sign-in: exempt from the window above
MAX_LOCK = timedelta(minutes=15)
ROLES = ("admin", "reviewer", "viewer")  # everything; jobs, review and render; read only
CLAIM_TTL = timedelta(minutes=2)  # a review page renews its claim every 30 s while it stays open
_hasher = PasswordHasher()  # argon2id, 64 MiB, 3 passes (RFC 9106 second recommendation)
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))  # verified against for unknown emails: same timing


def _lock_for(failures: int, free: int) -> timedelta:
    """0 for the first `free` failures, then 5 s, 10 s, 20 s, ... up to 15 minutes."""
    if failures <= free:
        return timedelta(0)
    return min(timedelta(seconds=5 * 2 ** min(failures - free - 1, 10)), MAX_LOCK)


class _Recent(OrderedDict):
    """A dict that forgets its least recently written keys beyond `size`."""

    def __init__(self, size: int = 10_000) -> None:
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class _Throttle:
    """Failed sign-ins by (email, address), by address and by email, and the locks they lead to; and the
    addresses each email has signed in from (the newest `KNOWN_SOURCES`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs, self._sources, self._accounts = _Recent(), _Recent(), _Recent()
        self._known = _Recent()  # email -> the addresses of its last successful sign-ins, newest last

    def known(self, email: str, source: str) -> bool:
        """Whether `email` has signed in successfully from `source` (one of its last `KNOWN_SOURCES`)."""
        with self._lock:
            return source in self._known.get(email, ())

    def locked_until(self, email: str, source: str) -> datetime | None:
        with self._lock:
            window = self._accounts.get(email, ())
            exempt = source in self._known.get(email, ())  # an address this email signed in from before
            until = [
                self._pairs.get((email, source), (0, None))[1],
                self._sources.get(source, (0, None))[1],
                window[0] + ACCOUNT_WINDOW if len(window) >= ACCOUNT_WINDOW_FAILURES and not exempt else None,
            ]
        return max((u for u in until if u is not None), default=None)

    def failed(self, email: str, source: str, now: datetime) -> timedelta:
        """Count a failure; the lock it starts (0 when none)."""
        with self._lock:
            locks = [
                self._count(self._pairs, (email, source), FREE_FAILURES, now),
                self._count(self._sources, source, SOURCE_FREE_FAILURES, now),
            ]
            window = self._accounts.get(email) or deque(maxlen=ACCOUNT_WINDOW_FAILURES)
            window.append(now)
            self._accounts.put(email, window)
            full = len(window) >= ACCOUNT_WINDOW_FAILURES and now - window[0] < ACCOUNT_WINDOW
            if full and source not in self._known.get(email, ()):
                locks.append(window[0] + ACCOUNT_WINDOW - now)
        return max(locks)

    @staticmethod
    def _count(table: _Recent, key, free: int, now: datetime) -> timedelta:
        failures = table.get(key, (0, None))[0] + 1
        lock = _lock_for(failures, free)
        table.put(key, (failures, now + lock if lock else None))
        return lock

    def succeeded(self, email: str, source: str) -> None:
        with self._lock:
            self._pairs.pop((email, source), None)
            self._sources.pop(source, None)
            known = [s for s in self._known.get(email, ()) if s != source] + [source]
            self._known.put(email, tuple(known[-KNOWN_SOURCES:]))


_throttle = _Throttle()


def known_source(email: str, source: str | None) -> bool:
    """Whether `email` has signed in successfully from `source` in this process (see the module's docstring):
    such a sign-in is exempt from the account's window here and has a reserved share of the sign-in gate."""
    return _throttle.known(_normal_email(email), source_key(source))


def source_key(address: str | None) -> str:
    """What sign-ins are counted by: the IPv4 address, or the /64 network of an IPv6 one (one host's share)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "-"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


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


def create_admin(db: sessionmaker[Session], email: str, password: str, role: str = "admin") -> AdminUser:
    """A new panel account; AdminError when the email is taken or malformed, the password too short or the
    role not one of ROLES."""
    email = _normal_email(email)
    if role not in ROLES:
        raise AdminError(f"the role must be one of {', '.join(ROLES)}, not {role!r}")
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise AdminError(f"not an email address: {email!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    with db.begin() as session:
        if session.scalar(select(AdminUser.id).where(AdminUser.email == email)):
            raise AdminError(f"an admin account for {email} exists already")
        row = AdminUser(email=email, password_hash=hash_password(password), role=role)
        session.add(row)
    return row


def ensure_admin(db: sessionmaker[Session], email: str, password: str) -> bool:
    """Create the account unless it exists (start-up from VEIL_ADMIN_EMAIL/PASSWORD). True if created."""
    with db() as session:
        if session.scalar(select(AdminUser.id).where(AdminUser.email == _normal_email(email))):
            return False
    create_admin(db, email, password)
    return True


def sign_in(
    db: sessionmaker[Session], email: str, password: str, session_hours: float, source: str | None = None
) -> SignedIn | None:
    """A new session for the right email and password; None when wrong; SignInLocked while backing off
    (even with the right password, so guessing gains nothing from the lock). Unknown emails back off the
    same way, so neither the answer nor the lock tells whether an account exists. `source` is the client's
    address (see the module's docstring)."""
    now, email, source = utcnow(), _normal_email(email), source_key(source)
    locked_until = _throttle.locked_until(email, source)
    if locked_until is not None and locked_until > now:
        raise SignInLocked(max(1, round((locked_until - now).total_seconds())))
    with db() as session:
        admin = session.scalar(select(AdminUser).where(AdminUser.email == email))
    if admin is None or not verify_password(admin.password_hash, password):
        if admin is None:
            verify_password(_DUMMY_HASH, password)  # the same work as for an account
        else:
            with db.begin() as session:
                session.execute(
                    update(AdminUser)
                    .where(AdminUser.id == admin.id)
                    .values(failed_signins=AdminUser.failed_signins + 1)
                )
        lock = _throttle.failed(email, source, now)
        if lock:
            raise SignInLocked(max(1, round(lock.total_seconds())))
        return None
    _throttle.succeeded(email, source)
    token = secrets.token_urlsafe(32)
    with db.begin() as session:
        session.execute(
            update(AdminUser)
            .where(AdminUser.id == admin.id)
            .values(failed_signins=0, locked_until=None, last_signin_at=now)
        )
        session.execute(delete(AdminSession).where(AdminSession.expires_at < now))
        session.add(
            AdminSession(
                token_hash=_token_hash(token), admin_id=admin.id, expires_at=now + timedelta(hours=session_hours)
            )
        )
        if _hasher.check_needs_rehash(admin.password_hash):
            session.execute(
                update(AdminUser).where(AdminUser.id == admin.id).values(password_hash=hash_password(password))
            )
    return SignedIn(admin=admin, token=token)


def session_admin(db: sessionmaker[Session], token: str | None) -> AdminUser | None:
    """The admin a session cookie belongs to, or None (missing, unknown, expired)."""
    if not token:
        return None
    with db() as session:
        row = session.scalar(
            select(AdminUser)
            .join(AdminSession, AdminSession.admin_id == AdminUser.id)
            .where(AdminSession.token_hash == _token_hash(token), AdminSession.expires_at > utcnow())
        )
    return row


def sign_out(db: sessionmaker[Session], token: str | None) -> None:
    if token:
        with db.begin() as session:
            session.execute(delete(AdminSession).where(AdminSession.token_hash == _token_hash(token)))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ----------------------------------------------------------------------------- roles
def list_admins(db: sessionmaker[Session]) -> list[AdminUser]:
    with db() as session:
        return list(session.scalars(select(AdminUser).order_by(AdminUser.email)))


def set_role(db: sessionmaker[Session], admin_id: str, role: str) -> None:
    """Change an account's role; AdminError for an unknown role or account, or for taking the role of the
    last admin (someone must still be able to manage accounts)."""
    if role not in ROLES:
        raise AdminError(f"the role must be one of {', '.join(ROLES)}, not {role!r}")
    with db.begin() as session:
        row = session.get(AdminUser, admin_id, with_for_update=True)
        if row is None:
            raise AdminError("no such account")
        if row.role == "admin" and role != "admin":
            others = session.scalar(
                select(func.count(AdminUser.id)).where(AdminUser.role == "admin", AdminUser.id != admin_id)
            )
            if not others:
                raise AdminError(f"{row.email} is the last admin: make another account admin first")
        row.role = role


# ----------------------------------------------------------------------------- review queue, claims and log
def review_queue(db: sessionmaker[Session], limit: int, offset: int) -> tuple[list[Job], int]:
    """Jobs awaiting review, oldest first, with their tasks; and how many there are."""
    waiting = Job.status == "awaiting_review"
    with db() as session:
        jobs = list(
            session.scalars(
                select(Job)
                .where(waiting)
                .options(selectinload(Job.tasks))
                .order_by(Job.updated_at, Job.id)
                .limit(limit)
                .offset(offset)
            )
        )
        return jobs, session.scalar(select(func.count(Job.id)).where(waiting)) or 0


def awaiting_review(db: sessionmaker[Session]) -> int:
    with db() as session:
        return session.scalar(select(func.count(Job.id)).where(Job.status == "awaiting_review")) or 0


def claim(db: sessionmaker[Session], job_id: str, email: str) -> str:
    """Claim a job for review, or renew this account's claim. Returns who holds the claim now: `email`, or
    another account whose claim has not expired (a soft claim: the page shows it, nothing is refused)."""
    now = utcnow()
    with db.begin() as session:
        row = session.get(ReviewClaim, job_id, with_for_update=True)
        if row is not None and row.admin_email != email and _aware(row.expires_at) > now:
            return row.admin_email
        if row is None:
            session.add(ReviewClaim(job_id=job_id, admin_email=email, expires_at=now + CLAIM_TTL))
        else:
            row.admin_email, row.expires_at = email, now + CLAIM_TTL
    return email


def release(db: sessionmaker[Session], job_id: str, email: str) -> None:
    with db.begin() as session:
        session.execute(delete(ReviewClaim).where(ReviewClaim.job_id == job_id, ReviewClaim.admin_email == email))


def claims(db: sessionmaker[Session], job_ids: list[str]) -> dict[str, str]:
    """{job id: the email of who reviews it} for the unexpired claims among `job_ids`."""
    with db() as session:
        rows = session.scalars(select(ReviewClaim).where(ReviewClaim.job_id.in_(job_ids)))
        return {r.job_id: r.admin_email for r in rows if _aware(r.expires_at) > utcnow()}


def record(db: sessionmaker[Session], job_id: str, email: str, action: str, detail: str) -> None:
    with db.begin() as session:
        session.add(ReviewEntry(job_id=job_id, admin_email=email, action=action, detail=detail[:2000]))


def review_log(db: sessionmaker[Session], job_id: str) -> list[ReviewEntry]:
    with db() as session:
        return list(session.scalars(select(ReviewEntry).where(ReviewEntry.job_id == job_id).order_by(ReviewEntry.id)))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
