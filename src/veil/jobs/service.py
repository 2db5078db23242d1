"""Jobs: the state machine and the use cases behind the public API.

States (`Job.status`) and the seed's `job_status` number each maps to:

    created ──upload committed──▶ uploaded ──priced──▶ awaiting_approval ──approve──▶ queued
      0                              0                       0                        0
    queued ──worker claims──▶ running (1–99 = progress) ──▶ completed (100) | failed (200)
    running ──lease ran out (worker died)──▶ queued (swept, sent again; finished files stay finished)
    any state before running ──cancel──▶ cancelled (200);  running ──cancel──▶ cancelled at the next file

Rules:
- The input is frozen once committed (the store's infinite lease: the upload URL can no longer write it),
  and the SHA-256 of what was priced is kept; the worker refuses (and refunds) any other content.
- Cost is computed (H7's pricing) as soon as the upload is committed, so the JobReport shows
  `job_total_credit_cost` before approval. An unusable upload (not an image/video/archive, nested
  archive, unsafe names, bombs, size ≠ declared) fails the job there, before anything is charged.
- Approval reserves the cost atomically (`veil.jobs.credits.reserve`).
- A worker runs a job only while it holds the job's lease (`leases.Leases`: owner + expiry on the row,
  taken by one conditional UPDATE and renewed by a heartbeat); everything it writes is conditional on still
  holding it, so a worker that lost its lease (stalled past the expiry, its job retaken) changes nothing.
- A job is completed when at least one of its files was anonymized; it fails (200) only when none was.
- The reservation is refunded (and recorded in the ledger) when the job fails through no fault of its
  input (engine/storage/internal error on every file) or is cancelled before a worker started it. A job
  cancelled while running keeps only what its processed files cost (`pricing.cost_of_members`, at least
  the job minimum), and nothing if no file was completed.
- Callbacks go out on their own threads (`notifications.Notifier`, sending with `callbacks.CallbackDispatcher`),
  never the pricing pool's; every delivery is recorded in `callback_deliveries`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..db.models import FINAL, WAITING, Job, Task, utcnow
from ..db.session import changed, open_database
from ..engine.config import ModelConfig
from ..settings import Settings
from ..storage.local import LocalBlobStore
from . import credits
from .intake import APPROVE_WAITS_FOR_PRICING_SECONDS, Intake
from .job_report import describe, job_report
from .leases import Leases
from .names import INPUT_CONTAINER, OUTPUT_CONTAINER, safe_name
from .notifications import Notifier

log = logging.getLogger(__name__)

MODELS = ("blur",)


class JobNotFound(LookupError):
    """No such job for this key (another key's job is reported the same way)."""


class JobConflict(Exception):
    """The job is in a state that does not allow the request."""


class UploadTooLarge(ValueError):
    pass


@dataclass
class UploadSession:
    job: Job
    session_uri: str
    sas_parts: dict[str, str]


class JobService(Intake):
    """The state machine (the module's docstring); uploads and pricing are `Intake`'s."""

    def __init__(
        self, settings: Settings, db: sessionmaker[Session], store, dispatch: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.dispatch = dispatch or (lambda job_id: None)  # called with a job id once it is queued
        # called with (job id, task id, segment index) for each segment other workers may take (Celery)
        self.dispatch_segment: Callable[[str, int, int], None] | None = None
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="veil-jobs")  # pricing
        self.notifier = Notifier(settings, db, self.get_job, self.report)  # callbacks and their records
        self.leases = Leases(settings, db, self.send)  # claim, renew, sweep
        self._closed = threading.Event()
        self._pricing: dict[str, Future] = {}  # job id → its pricing running on self._background

    def close(self) -> None:
        """Stop: waits for pricing in progress, never for a callback receiver (queued deliveries are dropped)."""
        self._closed.set()
        self.notifier.close()
        self._background.shutdown(wait=True, cancel_futures=True)
        engine = self.db.kw.get("bind")
        if engine is not None:
            engine.dispose()  # a PostgreSQL pool would otherwise hold its connections until the process ends

    # ------------------------------------------------------------------ creating jobs
    def create_job(
        self,
        key_id: str,
        file_name: str,
        file_size: int | None,
        content_type: str = "",
        model: str = "blur",
        model_config: dict | None = None,
    ) -> UploadSession:
        """Validate the request, create the job and an upload URL. Raises ValueError / UploadTooLarge."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
        config = ModelConfig(**(model_config or {}))  # pydantic ValidationError names bad keys
        if file_size is not None and file_size > self.settings.max_upload_bytes:
            raise UploadTooLarge(f"file_size {file_size} exceeds the {self.settings.max_upload_bytes}-byte limit")
        if file_size is not None and file_size < 0:
            raise ValueError("file_size must not be negative")
        with self.db.begin() as session:
            job = Job(
                key_id=key_id,
                file_name=safe_name(file_name, "upload"),
                file_size=file_size,
                content_type=content_type or "",
                model=model,
                model_config_json=config.model_dump(exclude_unset=True),
                input_blob="",
            )
            session.add(job)
            session.flush()
            job.input_blob = job.id
        expires = timedelta(seconds=self.settings.upload_sas_seconds)
        uri = self.store.signed_upload_url(INPUT_CONTAINER, job.input_blob, expires)
        parts = self.store.upload_sas_parts(INPUT_CONTAINER, job.input_blob, expires)
        return UploadSession(job=job, session_uri=uri, sas_parts=parts)

    # ------------------------------------------------------------------ upload finished
    def approve(self, key_id: str, job_id: str) -> Literal["approved", "already", "waiting"]:
        """Reserve the cost and queue the job. Raises JobNotFound, credits.InsufficientCredits."""
        job = self.get_job(job_id, key_id)
        if job.status == "created" and not self.store_publishes_events:
            self.check_upload(job)
            job = self.get_job(job_id, key_id)
        if job.status == "uploaded":
            being_priced = self._pricing.get(job_id)
            if being_priced is None:  # not being priced by this process (interrupted, or another's): price now
                try:
                    self.price_job(job_id)
                except Exception:  # noqa: BLE001 - an outage while pricing: the client retries (302), no 500
                    log.exception("pricing job %s failed", job_id)
            else:  # being priced here: wait a little, then let the client ask again (302) rather than block
                wait([being_priced], timeout=APPROVE_WAITS_FOR_PRICING_SECONDS)
            job = self.get_job(job_id, key_id)
        if job.status in ("created", "uploaded"):
            return "waiting"
        if job.status != "awaiting_approval":
            return "already"
        cost = job.total_cost or 0
        with self.db.begin() as session:
            claimed = changed(
                session,
                update(Job)
                .where(Job.id == job_id, Job.status == "awaiting_approval")
                .values(status="queued", approved_at=utcnow(), reserved_credits=cost),
            )
            if claimed != 1:
                return "already"
            credits.reserve(session, key_id, job_id, cost)  # raises → the whole transaction rolls back
        self.send(job_id)
        return "approved"

    def send(self, job_id: str) -> bool:
        """Hand a queued job to the queue; a failed send is logged and retried by `sweep`."""
        try:
            self.dispatch(job_id)
        except Exception:  # noqa: BLE001 - the broker is down: the job stays queued, unsent
            log.warning("job %s: sending to the queue failed; it is re-sent at the next sweep", job_id, exc_info=True)
            with self.db.begin() as session:
                session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=None))
            return False
        with self.db.begin() as session:
            session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=utcnow()))
        return True

    # ------------------------------------------------------------------ worker side
    def finish(
        self,
        job_id: str,
        status: str,
        description: str,
        refund_reason: str | None = None,
        keep: int = 0,
        owner: str | None = None,
    ) -> bool:
        """Record a job's final state; when `refund_reason` is given, refund its reservation but `keep` credits.
        A worker passes its lease `owner`: nothing is written unless it still holds the lease."""
        with self.db.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status in FINAL:
                return False
            if owner is not None and (job.status != "running" or job.lease_owner != owner):
                log.warning("job %s: lease lost; this worker's result is dropped", job_id)
                return False
            job.status, job.description, job.finished_at = status, description, utcnow()
            job.lease_owner = job.lease_expires_at = None
            if status == "completed":
                job.progress = 1.0
            if refund_reason:
                self._refund(session, job, refund_reason, keep)
        log.info("job %s: %s (%s)", job_id, status, description)
        self.notifier.notify(job_id)
        return True

    @staticmethod
    def _refund(session: Session, job: Job, reason: str, keep: int = 0) -> None:
        amount = job.reserved_credits - max(keep, 0) - job.refunded_credits
        if amount > 0:
            credits.refund(session, job.key_id, job.id, amount, reason)
            job.refunded_credits += amount

    def expire_unapproved(self) -> int:
        """Uploads not approved within `approval_timeout_seconds` fail and their input is deleted."""
        cutoff = utcnow() - timedelta(seconds=self.settings.approval_timeout_seconds)
        waiting = ("uploaded", "awaiting_approval")
        with self.db() as session:
            ids = list(session.scalars(select(Job.id).where(Job.status.in_(waiting), Job.uploaded_at < cutoff)))
        days = self.settings.approval_timeout_seconds / 86400
        expired = 0
        for job_id in ids:
            with self.db.begin() as session:
                rows = changed(
                    session,
                    update(Job)
                    .where(Job.id == job_id, Job.status.in_(waiting))
                    .values(
                        status="failed",
                        finished_at=utcnow(),
                        files_deleted=True,
                        description=f"not approved within {days:g} days; the upload was deleted",
                    ),
                )
            if rows == 1:
                self.store.delete(INPUT_CONTAINER, self.get_job(job_id).input_blob)
                self.notifier.notify(job_id)
                expired += 1
        return expired

    def housekeeping(self) -> None:
        """Expire upload sessions whose SAS has run out (job → failed, nothing was charged), uploads never
        approved (`expire_unapproved`), and let the store drop uncommitted blocks older than an upload SAS
        lifetime (a slow upload may still commit them). Callback deliveries still queued a day on were lost
        with the process sending them (each ends within minutes): recorded as dropped."""
        cutoff = utcnow() - timedelta(seconds=self.settings.upload_sas_seconds)
        with self.db.begin() as session:
            session.execute(
                update(Job)
                .where(Job.status == "created", Job.created_at < cutoff)
                .values(
                    status="failed",
                    description="the upload session expired before the upload was complete",
                    finished_at=utcnow(),
                )
            )
        self.notifier.drop_unfinished()
        self.expire_unapproved()
        cleanup = getattr(self.store, "cleanup", None)
        if cleanup is not None:
            cleanup(timedelta(seconds=self.settings.upload_sas_seconds))

    # ------------------------------------------------------------------ client extensions
    def cancel(self, key_id: str, job_id: str) -> Job:
        """Cancel a job. Before a worker started it: cancelled at once and refunded. Running: the worker
        stops before its next file and refunds what the files it did not process cost. Finished: JobConflict."""
        job = self.get_job(job_id, key_id)
        if job.status in FINAL:
            raise JobConflict(f"job is already {job.status}")
        with self.db.begin() as session:
            row = session.get(Job, job_id, with_for_update=True)
            if row is None:
                raise JobNotFound(f"no job {job_id} for this key")
            paid_render = (row.render_request or {}).get("cost")
            if row.status == "queued" and paid_render:  # a render not started: the job stays as it was
                credits.refund(session, row.key_id, row.id, paid_render, "render cancelled before it started")
                row.refunded_credits += paid_render
                row.status, row.description, row.render_request = "completed", "render cancelled", None
                row.progress, row.finished_at = 1.0, utcnow()
                session.execute(update(Task).where(Task.job_id == job_id).values(render_pending=False))
            elif row.status in WAITING or row.status == "awaiting_review":
                row.status, row.description, row.finished_at = "cancelled", "cancelled by the client", utcnow()
                self._refund(session, row, "job cancelled before processing")
            elif row.status == "running":
                row.cancel_requested = True
        job = self.get_job(job_id, key_id)
        if job.status == "cancelled":
            self.store.freeze(INPUT_CONTAINER, job.input_blob)  # the upload URL must not re-create it
            self.store.delete(INPUT_CONTAINER, job.input_blob)
            self.notifier.notify(job_id)
        return job

    def delete_files(self, key_id: str, job_id: str) -> Job:
        """Delete the job's input and outputs from the store (the job record and its ledger stay)."""
        job = self.get_job(job_id, key_id)
        if job.status not in FINAL:
            raise JobConflict(f"job is {job.status}; cancel it or wait until it finishes before deleting its files")
        self.store.delete(INPUT_CONTAINER, job.input_blob)
        for task in job.tasks:
            for blob in task.stored():
                self.store.delete(OUTPUT_CONTAINER, blob)
        with self.db.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(files_deleted=True))
        return self.get_job(job_id, key_id)

    def list_jobs(self, key_id: str | None, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """Newest first; `key_id=None` lists every key's jobs (admin)."""
        query = select(Job)
        count = select(func.count(Job.id))
        if key_id is not None:
            query, count = query.where(Job.key_id == key_id), count.where(Job.key_id == key_id)
        with self.db() as session:
            jobs = list(
                session.scalars(
                    query.options(selectinload(Job.tasks))
                    .order_by(Job.created_at.desc(), Job.id)
                    .limit(limit)
                    .offset(offset)
                )
            )
            total = session.scalar(count) or 0
        return jobs, total

    # ------------------------------------------------------------------ reading
    def get_job(self, job_id: str, key_id: str | None = None) -> Job:
        """The job with its tasks loaded; JobNotFound when absent or owned by another key."""
        with self.db() as session:
            job = session.scalar(select(Job).where(Job.id == str(job_id)).options(selectinload(Job.tasks)))
        if job is None or (key_id is not None and job.key_id != key_id):
            raise JobNotFound(f"no job {job_id} for this key")
        return job

    def report(self, job: Job) -> dict[str, Any]:
        """The seed's JobReport (plus Veil's extra fields), download links freshly signed."""
        return job_report(job, self.store, timedelta(seconds=self.settings.download_sas_seconds))

    describe = staticmethod(describe)

    def _work_root(self) -> Path:
        root = self.settings.data_dir / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root


def build_store(settings: Settings):
    """The BlobStore the settings name: the embedded local store, or an Azure account."""
    if settings.storage_backend == "azure":
        from ..storage.azure import AzureBlobStore  # lazy: azure-storage-blob is optional (veil[azure])

        if settings.azure_connection_string:
            return AzureBlobStore(settings.azure_connection_string, api_version=settings.azure_api_version)
        if not (settings.azure_blob_url and settings.storage_key):
            raise ValueError(
                "the azure storage backend needs VEIL_AZURE_CONNECTION_STRING, or "
                "VEIL_AZURE_BLOB_URL and VEIL_STORAGE_KEY"
            )
        return AzureBlobStore(
            account_url=settings.azure_blob_url,
            account_key=settings.storage_key,
            api_version=settings.azure_api_version,
        )
    return LocalBlobStore(
        settings.data_dir / "blobs", settings.storage_account, settings.account_key, settings.base_url
    )


def build_service(settings: Settings, dispatch: Callable[[str], None] | None = None, store=None) -> JobService:
    """Database (migrated to head) + store + service, as configured."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _, db = open_database(settings.db_url)
    return JobService(settings, db, store if store is not None else build_store(settings), dispatch)
