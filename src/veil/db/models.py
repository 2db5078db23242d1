"""SQLAlchemy 2 models: API keys, credit ledger, jobs, their tasks (and long videos' segments), callback
registrations and deliveries, admin accounts and their sign-in sessions.

Job.status is the state machine (see `veil.jobs.service`):
created → uploaded → awaiting_approval → queued → running → completed | failed | cancelled
(with model_config.review: running → awaiting_review → queued by a render → running → completed;
a completed job's render: completed → queued → running → completed)
(created/uploaded may also go straight to failed when the upload is unusable).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


# A job's states (the state machine is `veil.jobs.service`'s), in their order; those waiting for the client or a
# worker, and the final ones.
JobState = Literal[
    "created",
    "uploaded",
    "awaiting_approval",
    "queued",
    "running",
    "awaiting_review",
    "completed",
    "failed",
    "cancelled",
]
STATES: tuple[str, ...] = get_args(JobState)
WAITING = ("created", "uploaded", "awaiting_approval", "queued")
FINAL = ("completed", "failed", "cancelled")


def _uuid() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex of the key
    name: Mapped[str] = mapped_column(String(200), default="")
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # to the minute


class CreditEntry(Base):
    """One change of a key's balance: admin_add (+), reserve (−) at approval, refund (+)."""

    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)  # signed change of the balance
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200), default="system")  # who: "admin:<email>", "cli", "system"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    file_name: Mapped[str] = mapped_column(String(255))
    file_size: Mapped[int | None] = mapped_column(BigInteger)  # declared by the client
    uploaded_size: Mapped[int | None] = mapped_column(BigInteger)
    input_sha256: Mapped[str | None] = mapped_column(String(64))  # of the input as priced (worker checks it)
    content_type: Mapped[str] = mapped_column(String(100), default="")
    model: Mapped[str] = mapped_column(String(50), default="blur")
    model_config_json: Mapped[dict] = mapped_column("model_config", JSON, default=dict)
    input_blob: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="created", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1 while running
    description: Mapped[str] = mapped_column(Text, default="")
    total_cost: Mapped[int | None] = mapped_column(BigInteger)
    reserved_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    files_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # the worker running the job holds a lease it renews while it runs (veil.jobs.leases)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last sent to the queue
    upload_etag: Mapped[str | None] = mapped_column(String(100))  # of the upload event last handled
    render_request: Mapped[dict | None] = mapped_column(JSON)  # {"config": overrides, "edits": {task index: [...]}}
    renders: Mapped[int] = mapped_column(Integer, default=0)  # renders requested after the job's own run
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    tasks: Mapped[list[Task]] = relationship(back_populates="job", order_by="Task.index", cascade="all, delete-orphan")

    @property
    def charged_credits(self) -> int:
        return self.reserved_credits - self.refunded_credits


class Task(Base):
    """One file of a job (the input itself, or one file of the archive)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    input_name: Mapped[str] = mapped_column(String(255))
    output_file: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|running|completed|failed
    error: Mapped[str | None] = mapped_column(Text)
    system_fault: Mapped[bool] = mapped_column(Boolean, default=False)  # failed through no fault of the input
    output_blob: Mapped[str | None] = mapped_column(String(300))
    detections: Mapped[int | None] = mapped_column(Integer)
    media: Mapped[str | None] = mapped_column(String(10))  # "image" | "video" once processed
    media_seconds: Mapped[float | None] = mapped_column(Float)  # a video's duration
    detections_blob: Mapped[str | None] = mapped_column(String(300))  # its detections document (output container)
    summary: Mapped[dict | None] = mapped_column(JSON)  # the per-file report (veil.engine.file_report)
    render_pending: Mapped[bool] = mapped_column(Boolean, default=False)  # a requested render has not drawn it yet
    # a video's review copy, made while a review-mode job detects it (`veil.engine.review_copy`): its files' blobs
    review_copy: Mapped[list | None] = mapped_column(JSON)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    job: Mapped[Job] = relationship(back_populates="tasks")

    def stored(self) -> list[str]:
        """Every blob of the output container this file's record names (output, document, review copy)."""
        return [b for b in (self.output_blob, self.detections_blob, *(self.review_copy or ())) if b]


class VideoSegment(Base):
    """One segment of a long video task (`veil.engine.segments`), run on its own: a completed one keeps its
    file in the output container until the task's output is stitched, and is never run again."""

    __tablename__ = "video_segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    window: Mapped[dict] = mapped_column(JSON)  # the engine's Segment (frames and timestamps)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|running|completed|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    # the worker running the segment (the job's worker or any Celery worker) renews this lease
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    blob: Mapped[str | None] = mapped_column(String(300))  # the segment's video, in the output container
    detections: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CallbackRegistration(Base):
    __tablename__ = "callbacks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)  # None: every job of the key
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CallbackDelivery(Base):
    """One notification to one callback URL, with how its delivery went (the admin's "Deliveries").

    `id` is the `X-Veil-Delivery` header the receiver sees (the same for every retry).
    status: queued (waiting for an attempt, or being attempted) → delivered (2xx) | refused (3xx/4xx,
    not retried) | failed (every attempt failed, or the address was not allowed) | dropped (the key's
    queue was full, or the service shut down first).
    """

    __tablename__ = "callback_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(20))  # the job's state reported: awaiting_approval, completed, ...
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer)  # the last HTTP answer, if any
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeploymentSecret(Base):
    """Secrets every process of a deployment must share (the callback signing key), made once."""

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AdminUser(Base):
    """An operator who signs in to the admin panel. `failed_signins` counts wrong passwords since the last
    sign-in; the back-off itself is kept per address in the API server (`veil.jobs.admins`), and
    `locked_until`, where it was kept before, is no longer set."""

    __tablename__ = "admin_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(Text)  # argon2id, PHC string
    failed_signins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_signin_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    role: Mapped[str] = mapped_column(String(20), default="admin")  # admin | reviewer | viewer (veil.jobs.admins)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewClaim(Base):
    """A soft claim: who is reviewing a job now (released on leaving the page, or when it expires)."""

    __tablename__ = "review_claims"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    admin_email: Mapped[str] = mapped_column(String(254))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewEntry(Base):
    """What a panel account did to a job under review (a render with its edits), shown on the job's page."""

    __tablename__ = "review_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    admin_email: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(20))  # render
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdminSession(Base):
    """A signed-in browser: the cookie holds a random token, only its sha256 is stored."""

    __tablename__ = "admin_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    admin_id: Mapped[str] = mapped_column(ForeignKey("admin_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
