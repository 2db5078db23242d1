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

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..db.models import FINAL, WAITING, Job, Task, utcnow
from ..db.session import changed, open_database
from ..engine.config import MediaLimits, ModelConfig
from ..engine.errors import MediaError
from ..logs import current_job
from ..settings import Settings
from ..storage.base import BlobNotFoundError
from ..storage.local import LocalBlobStore
from . import credits, pricing
from .archive import ArchiveError
from .job_report import describe, job_report
from .leases import Leases
from .names import INPUT_CONTAINER, OUTPUT_CONTAINER, public_message, safe_name
from .notifications import Notifier

log = logging.getLogger(__name__)

MODELS = ("blur",)
APPROVE_WAITS_FOR_PRICING_SECONDS = 2.0


class JobNotFound(LookupError):
    """No such job for this key (another key's job is reported the same way)."""


class JobConflict(Exception):
    """The job is in a state that does not allow the request."""


class UploadTooLarge(ValueError):
    pass


class InputChanged(Exception):
    """The input blob is not the content that was priced (it must never be processed)."""


@dataclass
class UploadSession:
    job: Job
    session_uri: str
    sas_parts: dict[str, str]


class JobService:
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
    def on_blob_created(self, container: str, name: str, size: int, etag: str | None = None) -> bool:
        """A committed upload (the embedded store's endpoint, an Event Grid event, or polling): mark the
        job uploaded, freeze the input, price it in the background. An event for the ETag already handled
        (an at-least-once redelivery) changes nothing. True when the job was marked uploaded."""
        if container != INPUT_CONTAINER:
            return False
        etag = etag.strip('"') if etag else None
        query = update(Job).where(Job.input_blob == name, Job.status.in_(("created", "uploaded", "awaiting_approval")))
        if etag:
            query = query.where(or_(Job.upload_etag.is_(None), Job.upload_etag != etag))
        with self.db.begin() as session:  # a commit that slipped in before the freeze is priced again
            rows = changed(
                session,
                query.values(
                    status="uploaded",
                    uploaded_size=size,
                    uploaded_at=utcnow(),
                    total_cost=None,
                    input_sha256=None,
                    upload_etag=etag,
                ),
            )
        if rows != 1:
            return False
        log.info("job %s: upload committed (%d bytes)", name, size)
        try:
            self.store.freeze(INPUT_CONTAINER, name)
        except Exception:  # noqa: BLE001 - the worker's SHA-256 check still refuses swapped content
            log.exception("could not freeze the input of job %s", name)
        if not self._closed.is_set():
            self._price_in_background(name)
        return True

    def upload_rule(self, container: str, name: str) -> tuple[str | None, int | None]:
        """For the blob endpoint: the API key that owns an input blob and the most bytes it may hold (the
        declared file_size), so one cheap block named over and over cannot commit a huge blob."""
        if container != INPUT_CONTAINER:
            return None, None
        with self.db() as session:
            row = session.execute(select(Job.key_id, Job.file_size).where(Job.id == name)).first()
        return (row.key_id, row.file_size) if row else (None, None)

    @property
    def store_publishes_events(self) -> bool:
        """True for the embedded store (its endpoint calls on_blob_created); an Azure account without an
        Event Grid subscription must be polled (notes §5): a blob appears atomically when committed."""
        return isinstance(self.store, LocalBlobStore)

    def check_upload(self, job: Job) -> None:
        """Poll the store for a committed upload (HEAD); marks the job uploaded if it is there."""
        props = getattr(self.store, "properties", None)
        if props is not None:  # one request: size and ETag (so a later event for this commit is a duplicate)
            try:
                found = props(INPUT_CONTAINER, job.input_blob)
            except FileNotFoundError:
                return
            self.on_blob_created(INPUT_CONTAINER, job.input_blob, found.size, found.etag)
        elif self.store.exists(INPUT_CONTAINER, job.input_blob):
            self.on_blob_created(INPUT_CONTAINER, job.input_blob, self.store.size(INPUT_CONTAINER, job.input_blob))

    def poll_uploads(self) -> None:
        """check_upload for every job still waiting for its upload (stores that publish no events)."""
        if self.store_publishes_events:
            return
        with self.db() as session:
            jobs = list(session.scalars(select(Job).where(Job.status == "created")))
        for job in jobs:
            if self._closed.is_set():
                return
            self.check_upload(job)

    def _price_in_background(self, job_id: str) -> None:
        future = self._background.submit(self._price_quietly, job_id)
        self._pricing[job_id] = future

        def forget(done: Future) -> None:  # runs at once if pricing already finished
            if self._pricing.get(job_id) is done:
                self._pricing.pop(job_id, None)

        future.add_done_callback(forget)

    def _price_quietly(self, job_id: str) -> None:
        token = current_job.set(job_id)
        try:
            self.price_job(job_id)
        except Exception:  # noqa: BLE001 - logged; the job stays `uploaded` and is priced again at start-up
            log.exception("pricing job %s failed", job_id)
        finally:
            current_job.reset(token)

    def price_job(self, job_id: str) -> None:
        """uploaded → awaiting_approval with its cost, or → failed when the upload is unusable."""
        job = self.get_job(job_id)
        if job.status != "uploaded":
            return
        problem, cost, digest = None, None, None
        if job.file_size is not None and job.uploaded_size != job.file_size:
            problem = f"uploaded {job.uploaded_size} bytes but file_size declared {job.file_size}"
        else:
            with tempfile.TemporaryDirectory(dir=self._work_root()) as tmp:
                try:
                    path, digest = self._copy_input(job, Path(tmp))
                except BlobNotFoundError:
                    if self.get_job(job_id).status != "uploaded":
                        return  # priced meanwhile by another caller, which deleted a refused input
                    raise
                try:
                    cost = int(
                        pricing.cost_of(
                            path,
                            pricing.Prices.from_settings(self.settings),
                            media=MediaLimits.from_settings(self.settings),
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - input errors (ArchiveError, MediaError) name the problem
                    if not _is_input_error(exc):
                        raise
                    problem = (
                        f"{job.file_name}: {public_message(str(exc).replace(str(path), job.file_name), Path(tmp))}"
                    )
        with self.db.begin() as session:
            values: dict[str, Any] = (
                {"status": "failed", "description": problem, "finished_at": utcnow(), "files_deleted": True}
                if problem
                else {"status": "awaiting_approval", "total_cost": cost, "input_sha256": digest}
            )
            # the size condition drops a result made stale by a re-upload while this one was priced
            rows = changed(
                session,
                update(Job)
                .where(Job.id == job_id, Job.status == "uploaded", Job.uploaded_size == job.uploaded_size)
                .values(**values),
            )
        if rows == 1:
            if problem:  # nothing will ever read it
                self.store.delete(INPUT_CONTAINER, job.input_blob)
            self.notifier.notify(job_id)

    def price_pending(self, stalled_seconds: float | None = None) -> None:
        """Price uploads whose pricing was interrupted: all of them at start-up, or (the sweeper of every API
        server) those uploaded over `stalled_seconds` ago, whose pricing process may have died."""
        query = select(Job.id).where(Job.status == "uploaded")
        if stalled_seconds is not None:
            query = query.where(Job.uploaded_at < utcnow() - timedelta(seconds=stalled_seconds))
        with self.db() as session:
            ids = list(session.scalars(query))
        for job_id in ids:
            self._price_in_background(job_id)

    def fetch_input(self, job: Job, directory: Path) -> Path:
        """Copy the job's input blob into `directory` under the client's (sanitized) file name; raises
        InputChanged (leaving no copy) unless it is the content that was priced."""
        size = self.store.size(INPUT_CONTAINER, job.input_blob)
        if job.uploaded_size is not None and size != job.uploaded_size:
            raise InputChanged(f"the upload changed after it was priced ({size} bytes, priced {job.uploaded_size})")
        path, digest = self._copy_input(job, directory)
        if job.input_sha256 is not None and digest != job.input_sha256:  # None: priced before this check existed
            path.unlink()
            raise InputChanged("the upload changed after it was priced (its SHA-256 differs)")
        return path

    def _copy_input(self, job: Job, directory: Path) -> tuple[Path, str]:
        """The input blob copied into `directory`, and its SHA-256 (hex)."""
        path = directory / safe_name(job.file_name, "upload")
        digest = hashlib.sha256()
        with self.store.open_read(INPUT_CONTAINER, job.input_blob) as src, path.open("wb") as dst:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                dst.write(chunk)
        return path, digest.hexdigest()

    # ------------------------------------------------------------------ approval
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
            for blob in (task.output_blob, task.detections_blob):
                if blob:
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


def _is_input_error(exc: Exception) -> bool:
    return isinstance(exc, (MediaError, ArchiveError, ValueError))


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
