"""A job's way in, before approval: the upload committed (an event, or polling a store that sends none), its
input frozen, priced in the background (or refused with the reason), and fetched by the worker with the
SHA-256 of what was priced checked. `JobService` (`veil.jobs.service`) is an `Intake`."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import Job, utcnow
from ..db.session import changed
from ..engine.config import MediaLimits
from ..engine.errors import MediaError
from ..logs import current_job
from ..settings import Settings
from ..storage.base import BlobNotFoundError
from ..storage.local import LocalBlobStore
from . import pricing
from .archive import ArchiveError
from .names import INPUT_CONTAINER, public_message, safe_name
from .notifications import Notifier

log = logging.getLogger("veil.jobs.service")

APPROVE_WAITS_FOR_PRICING_SECONDS = 2.0


class InputChanged(Exception):
    """The input blob is not the content that was priced (it must never be processed)."""


class Intake:
    # set by JobService.__init__
    settings: Settings
    db: sessionmaker[Session]
    store: Any
    notifier: Notifier
    _background: ThreadPoolExecutor
    _pricing: dict[str, Future]
    _closed: threading.Event
    get_job: Callable[..., Job]
    _work_root: Callable[[], Path]

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


def _is_input_error(exc: Exception) -> bool:
    return isinstance(exc, (MediaError, ArchiveError, ValueError))
