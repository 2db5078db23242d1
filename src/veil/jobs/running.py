"""What a worker holds while it runs a job (`veil.jobs.runner`): the job's lease and its heartbeat, the job's
progress, and its Task rows, each written only while the lease is held.

A worker runs a job only under its lease (`veil.jobs.leases`), renewed by a heartbeat thread. Every row it
writes (tasks, progress, the final state) is conditional on still holding the lease, and each run writes
its outputs under blob names of its own, so a worker that lost its lease stops at its next write having
changed nothing another worker relies on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from ..db.models import Job, Task, utcnow
from ..db.session import changed
from ..engine.errors import MediaError
from ..logs import current_job
from .drain import Drain, process_drain
from .leases import holds
from .names import output_name, public_message
from .service import JobService

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The client cancelled the job: raised inside the engine's progress callback."""


class LeaseLost(Exception):
    """Another worker has the job now (this one stalled past its lease): stop, write nothing more."""


def new_owner() -> str:
    """A lease owner naming this run: host, process and a token of its own."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def run_tag(owner: str) -> str:
    """The run's own token: its outputs' blob names carry it, so two runs never write the same blob."""
    return owner.rsplit(":", 1)[1]


class JobLease:
    """The job's lease while this worker runs it: a heartbeat thread renews it every third of its length;
    `check()` raises LeaseLost once a renewal found it taken."""

    def __init__(self, svc: JobService, job_id: str, owner: str, drain: Drain = process_drain) -> None:
        self.svc, self.job_id, self.owner, self.drain = svc, job_id, owner, drain
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"veil-lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> JobLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost()

    def written(self, rows: int) -> None:
        """After a write conditional on holding the lease: no row changed means another worker has the job."""
        if rows != 1:
            self.lost.set()
            raise LeaseLost()

    def lock(self, session: Session) -> None:
        """Lock the job's row in `session` while this worker holds it (LeaseLost when it does not)."""
        if session.scalar(select(Job.id).where(holds(self.job_id, self.owner)).with_for_update()) is None:
            raise LeaseLost()

    def _beat(self) -> None:
        current_job.set(self.job_id)
        while not self._stop.wait(self.svc.settings.job_lease_seconds / 3):
            try:
                held = self.svc.leases.renew_lease(self.job_id, self.owner)
            except Exception:  # noqa: BLE001 - a database blip: try again; the lease outlives two misses
                log.warning("job %s: renewing the lease failed", self.job_id, exc_info=True)
                continue
            if not held:
                log.warning("job %s: lease lost to another worker; stopping", self.job_id)
                self.lost.set()
                return


class Progress:
    """Maps per-file progress to the job's 0..1 progress; writes it at most twice a second and
    checks for a cancel request every few seconds (raising Cancelled inside the engine's callback)."""

    def __init__(self, svc: JobService, job_id: str, files: int, lease: JobLease) -> None:
        self.svc, self.job_id, self.files, self.lease = svc, job_id, max(files, 1), lease
        self._written = -1.0
        self._last_write = self._last_check = 0.0

    def for_file(self, index: int) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            self.lease.drain.check()
            self._write((index + min(max(fraction, 0.0), 1.0)) / self.files)
            self.check_cancel()

        return report

    def file_done(self, index: int) -> None:
        self._write((index + 1) / self.files, force=True)

    def _write(self, value: float, force: bool = False) -> None:
        self.lease.check()
        now = time.monotonic()
        if not force and (int(value * 100) == int(self._written * 100) or now - self._last_write < 0.5):
            return
        self._written, self._last_write = value, now
        with self.svc.db.begin() as session:
            value = min(value, 0.99)  # never below what an earlier run reached (a resumed file starts again)
            rows = changed(
                session,
                update(Job)
                .where(holds(self.job_id, self.lease.owner))
                .values(progress=case((Job.progress < value, value), else_=Job.progress)),
            )
        self.lease.written(rows)

    def check_cancel(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < 2.0:
            return
        self._last_check = now
        with self.svc.db() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise Cancelled()


def ensure_tasks(svc: JobService, job_id: str, files: list[Path], lease: JobLease) -> list[tuple[int, Path]]:
    """One Task per file, created on the first run and matched by name on a resumed run."""
    with svc.db.begin() as session:
        lease.lock(session)
        existing = {t.input_name: t for t in session.scalars(select(Task).where(Task.job_id == job_id))}
        taken = {t.output_file.casefold() for t in existing.values()}
        pairs = []
        for index, path in enumerate(files):
            task = existing.get(path.name)
            if task is None:
                task = Task(job_id=job_id, index=index, input_name=path.name, output_file=output_name(path.name, taken))
                session.add(task)
                session.flush()
            pairs.append((task.id, path))
    return pairs


def get_task(svc: JobService, task_id: int) -> Task:
    with svc.db() as session:
        return session.get_one(Task, task_id)


def set_task(svc: JobService, lease: JobLease, task_id: int, **values) -> None:
    """Update a task, only while this worker holds the job's lease."""
    with svc.db.begin() as session:
        held = select(Job.id).where(holds(lease.job_id, lease.owner)).scalar_subquery()
        rows = changed(session, update(Task).where(Task.id == task_id, Task.job_id == held).values(**values))
    lease.written(rows)


def fail_task(svc: JobService, lease: JobLease, task_id: int, path: Path, dst: Path, exc: Exception) -> None:
    """Record why one file failed: the input's fault (MediaError, its message) or Veil's (logged, refundable)."""
    input_fault = isinstance(exc, MediaError)
    if not input_fault:
        log.exception("job %s: file %s failed", lease.job_id, path.name)
    error = (
        public_message(str(exc), svc.settings.data_dir)
        if input_fault
        else f"internal error: {describe_error(exc, svc)}"
    )
    dst.unlink(missing_ok=True)  # first: on a full disk (the database's too), the room to record it
    set_task(svc, lease, task_id, status="failed", error=error, system_fault=not input_fault, finished_at=utcnow())


def describe_error(exc: Exception, svc: JobService) -> str:
    """An unexpected error for the client: its type and text, without file names or server paths (nor the
    statement and help link SQLAlchemy adds to a database driver's error)."""
    exc = getattr(exc, "orig", None) or exc
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {public_message(text, svc.settings.data_dir)}"


def output_suffix(name: str) -> str:
    """The input's extension for an output blob's name, when it is a plain one."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 10 else ""
