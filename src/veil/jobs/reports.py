"""Read-only figures for the admin panel: per-key totals, job search, usage per day, queue and storage.

Kinds are told by the file name's extension (archives, videos, everything else an image): the client's
content type is free text and the worker only learns the media once it has run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..db.models import ApiKey, CallbackDelivery, CreditEntry, Job, Task

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz", ".7z", ".rar")
VIDEO_SUFFIXES = (
    ".mp4",
    ".mov",
    ".m4v",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ts",
    ".mts",
)
KINDS = ("image", "video", "archive")
_SPENDING = ("reserve", "refund")  # ledger kinds whose sum is what jobs cost (reservations less refunds)


def kind_of(file_name: str) -> str:
    name = file_name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return "video" if name.endswith(VIDEO_SUFFIXES) else "image"


def _suffix_match(suffixes: tuple[str, ...]):
    return or_(*(func.lower(Job.file_name).like(f"%{s}") for s in suffixes))


@dataclass
class KeyRow:
    key: ApiKey
    jobs: int
    spent: int


def key_rows(db: sessionmaker[Session], key_id: str | None = None) -> list[KeyRow]:
    """Every key (or one) with its job count and the credits its jobs cost, oldest key first."""
    jobs = select(Job.key_id, func.count(Job.id).label("n")).group_by(Job.key_id).subquery()
    spent = (
        select(CreditEntry.key_id, func.sum(-CreditEntry.amount).label("spent"))
        .where(CreditEntry.kind.in_(_SPENDING))
        .group_by(CreditEntry.key_id)
        .subquery()
    )
    query = (
        select(ApiKey, func.coalesce(jobs.c.n, 0), func.coalesce(spent.c.spent, 0))
        .outerjoin(jobs, jobs.c.key_id == ApiKey.id)
        .outerjoin(spent, spent.c.key_id == ApiKey.id)
        .order_by(ApiKey.created_at)
    )
    if key_id:
        query = query.where(ApiKey.id == key_id)
    with db() as session:
        return [KeyRow(key, int(n), int(s)) for key, n, s in session.execute(query)]


@dataclass
class JobFilter:
    key_id: str | None = None
    status: str | None = None
    kind: str | None = None
    since: date | None = None  # created on or after this day (UTC)
    until: date | None = None  # created on or before this day (UTC)

    def conditions(self) -> list:
        found = []
        if self.key_id:
            found.append(Job.key_id == self.key_id)
        if self.status:
            found.append(Job.status == self.status)
        if self.kind == "archive":
            found.append(_suffix_match(ARCHIVE_SUFFIXES))
        elif self.kind == "video":
            found.append(_suffix_match(VIDEO_SUFFIXES))
        elif self.kind == "image":
            found.append(~_suffix_match(ARCHIVE_SUFFIXES + VIDEO_SUFFIXES))
        if self.since:
            found.append(Job.created_at >= datetime.combine(self.since, time.min, UTC))
        if self.until:
            found.append(Job.created_at < datetime.combine(self.until + timedelta(days=1), time.min, UTC))
        return found


def find_jobs(db: sessionmaker[Session], where: JobFilter, limit: int, offset: int) -> tuple[list[Job], int]:
    """Jobs matching `where`, newest first, with their tasks; and how many match in all."""
    conditions = where.conditions()
    with db() as session:
        jobs = list(
            session.scalars(
                select(Job)
                .where(*conditions)
                .options(selectinload(Job.tasks))
                .order_by(Job.created_at.desc(), Job.id)
                .limit(limit)
                .offset(offset)
            )
        )
        total = session.scalar(select(func.count(Job.id)).where(*conditions)) or 0
    return jobs, total


@dataclass
class UsageDay:
    day: date
    credits: int = 0
    files: int = 0
    video_minutes: float = 0.0


def usage_by_day(
    db: sessionmaker[Session], days: int, key_id: str | None = None, today: date | None = None
) -> list[UsageDay]:
    """Credits spent (reservations less refunds, by the day they were booked), files anonymized and video
    minutes processed (by the day each file finished), for the last `days` days up to `today` (UTC)."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, time.min, UTC)
    out = {first + timedelta(days=i): UsageDay(first + timedelta(days=i)) for i in range(days)}
    credit_day = func.date(CreditEntry.created_at)  # SQLite and PostgreSQL both have date()
    credit_query = (
        select(credit_day, func.sum(-CreditEntry.amount))
        .where(CreditEntry.kind.in_(_SPENDING), CreditEntry.created_at >= start)
        .group_by(credit_day)
    )
    task_day = func.date(Task.finished_at)
    minutes = func.sum(case((Task.media == "video", func.coalesce(Task.media_seconds, 0.0)), else_=0.0)) / 60.0
    task_query = (
        select(task_day, func.count(Task.id), minutes)
        .join(Job, Job.id == Task.job_id)
        .where(Task.status == "completed", Task.finished_at >= start)
        .group_by(task_day)
    )
    if key_id:
        credit_query = credit_query.where(CreditEntry.key_id == key_id)
        task_query = task_query.where(Job.key_id == key_id)
    with db() as session:
        for day, amount in session.execute(credit_query):
            if _day(day) in out:
                out[_day(day)].credits = int(amount or 0)
        for day, files, video_minutes in session.execute(task_query):
            if _day(day) in out:
                out[_day(day)].files, out[_day(day)].video_minutes = int(files), round(float(video_minutes or 0), 2)
    return list(out.values())


def _day(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])  # SQLite gives text


DELIVERY_STATES = ("queued", "delivered", "refused", "failed", "dropped")


def find_deliveries(
    db: sessionmaker[Session], status: str | None, key_id: str | None, limit: int, offset: int
) -> tuple[list[CallbackDelivery], int]:
    """Callback deliveries, newest first, and how many match."""
    conditions = [
        c
        for c in (
            CallbackDelivery.status == status if status else None,
            CallbackDelivery.key_id == key_id if key_id else None,
        )
        if c is not None
    ]
    with db() as session:
        rows = list(
            session.scalars(
                select(CallbackDelivery)
                .where(*conditions)
                .order_by(CallbackDelivery.created_at.desc())
                .limit(limit)
                .offset(offset)
            )
        )
        total = session.scalar(select(func.count(CallbackDelivery.id)).where(*conditions)) or 0
    return rows, total


def job_counts(db: sessionmaker[Session]) -> dict[str, int]:
    """How many jobs are in each state."""
    with db() as session:
        return {status: n for status, n in session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status))}


def stored_bytes(store) -> int | None:
    """Bytes under the embedded store's directory; None for stores that can't be summed cheaply (Azure)."""
    root = getattr(store, "root", None)
    if root is None:
        return None
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:  # deleted while we walked
                pass
    return total


def system_info(settings, db: sessionmaker[Session], store) -> dict:
    """What the System page shows: version, runtime and models, workers and queue, storage, database."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from ..engine import runtime, weights  # lazy: ONNX Runtime loads only when the System page asks

    try:
        veil_version = version("veil")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        veil_version = "0"
    try:
        provider = runtime.resolve_provider()
    except ValueError as exc:
        provider = f"misconfigured: {exc}"
    engine = db.kw["bind"]
    counts = job_counts(db)
    return {
        "version": veil_version,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "provider": provider,
        "providers": runtime.available_providers(),
        "models": weights.describe_models(),
        "worker": settings.worker,
        "concurrency": settings.worker_concurrency if settings.worker == "embedded" else None,
        "queued": counts.get("queued", 0),
        "running": counts.get("running", 0),
        "waiting": sum(counts.get(s, 0) for s in ("created", "uploaded", "awaiting_approval")),
        "storage_backend": settings.storage_backend,
        "stored_bytes": stored_bytes(store),
        "database": f"{engine.dialect.name} {'.'.join(map(str, engine.dialect.server_version_info or ()))}".strip(),
        "database_url": engine.url.render_as_string(hide_password=True),
    }
