"""`process_job(job_id)`: the one task function, run by the embedded worker threads and by Celery.

A job's input (image, video or archive of them) becomes one Task per file; each file is anonymized
by the engine with the job's ModelConfig and its output stored as a blob. A file the engine rejects
(MediaError: corrupt, unsupported) fails only its own task. The job completes when at least one file
succeeded and fails (job_status 200) only when none did. Finished tasks are never redone: a job
interrupted by a crash resumes at the start of the file it was working on.

A worker runs a job only under its lease (`veil.jobs.leases`), renewed by a heartbeat thread. Every row it
writes (tasks, progress, the final state) is conditional on still holding the lease, and each run writes
its outputs under blob names of its own, so a worker that lost its lease stops at its next write having
changed nothing another worker relies on.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path, PurePosixPath

from sqlalchemy import case, select, update

from ..db.models import Job, Task, utcnow
from ..engine.config import MediaLimits, ModelConfig
from ..jobs.leases import holds
from ..jobs.names import output_name, public_message, safe_name
from ..jobs.service import OUTPUT_CONTAINER, InputChanged, JobService
from ..logs import bind_key, current_job, name_key, unbind_key
from ..metrics import HANDED_BACK, file_meter
from .shutdown import Drain, HandBack, process_drain

log = logging.getLogger(__name__)

_default_service: JobService | None = None


class _Cancelled(Exception):
    pass


class _LeaseLost(Exception):
    """Another worker has the job now (this one stalled past its lease): stop, write nothing more."""


class _Lease:
    """The job's lease while this worker runs it: a heartbeat thread renews it every third of its length;
    `check()` raises _LeaseLost once a renewal found it taken."""

    def __init__(self, svc: JobService, job_id: str, owner: str, drain: Drain = process_drain) -> None:
        self.svc, self.job_id, self.owner, self.drain = svc, job_id, owner, drain
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"veil-lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self.lost.is_set():
            raise _LeaseLost()

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


def use_service(service: JobService) -> None:
    """The service Celery tasks in this process use (`veil worker` builds it from its settings)."""
    global _default_service
    _default_service = service


def default_service() -> JobService:
    """The service built from the environment (`VEIL_*`), for Celery workers."""
    global _default_service
    if _default_service is None:
        from ..jobs.service import build_service
        from ..settings import Settings

        _default_service = build_service(Settings())
    return _default_service


def new_owner() -> str:
    """A lease owner naming this run: host, process and a token of its own."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def process_job(job_id: str, service: JobService | None = None, drain: Drain | None = None) -> bool:
    """Claim a job and run it to a final state; does nothing (False) when it is finished or another
    worker holds its lease (a message delivered twice). When `drain` (a shutdown; default this process's)
    begins, the job is handed back (`veil.queue.shutdown`) unless its files finish within the grace period."""
    svc = service or default_service()
    drain = drain or process_drain
    owner = new_owner()
    if not svc.leases.claim(job_id, owner):
        log.info("job %s: not taken (finished, or running under another worker's lease)", job_id)
        return False
    token, key_token = current_job.set(job_id), bind_key()
    work = svc.settings.data_dir / "work" / f"{job_id}.{owner.rsplit(':', 1)[1]}"
    try:
        name_key(svc.get_job(job_id).key_id)
        log.info("job %s: started by %s", job_id, owner)
        with _Lease(svc, job_id, owner, drain) as lease:
            _run(svc, job_id, work, lease)
    except HandBack:
        _hand_back(svc, job_id, owner)
    except InputChanged as exc:
        log.warning("job %s: %s", job_id, exc)
        svc.finish(job_id, "failed", f"{exc}; nothing was processed and the credits were refunded",
                   refund_reason="input changed after it was priced", owner=owner)
    except _LeaseLost:
        log.warning("job %s: stopped; another worker holds its lease", job_id)
    except Exception as exc:  # noqa: BLE001 - never leave a job running because of a bug or an outage
        log.exception("job %s failed", job_id)
        shutil.rmtree(work, ignore_errors=True)  # first: on a full disk, the room to record the failure
        svc.finish(job_id, "failed", f"internal error: {_describe(exc, svc)}",
                   refund_reason="job failed through no fault of its input", owner=owner, keep=_kept(svc, job_id))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        current_job.reset(token)
        unbind_key(key_token)
    return True


def _kept(svc: JobService, job_id: str) -> int:
    """What a job failing through Veil's fault keeps of its reservation: nothing (its own run, or the first render
    after review, included in its price), or for a paid render the job's own price (the render's cost is refunded)."""
    job = svc.get_job(job_id)
    if job.render_request is None or not job.render_request.get("cost"):  # a job's own run, or its first render
        return 0
    return job.reserved_credits - job.refunded_credits - job.render_request["cost"]


def _hand_back(svc: JobService, job_id: str, owner: str) -> None:
    job = svc.get_job(job_id)
    left = sum(t.status not in ("completed", "failed") for t in job.tasks)
    if svc.leases.hand_back(job_id, owner):
        HANDED_BACK.inc()
        log.warning("job %s: handed back at shutdown with %d of %d files unfinished (progress %d %%, kept); lease "
                    "released, queued for another worker", job_id, left, len(job.tasks), round(job.progress * 100))


def _run(svc: JobService, job_id: str, work: Path, lease: _Lease) -> None:
    from ..jobs.archive import ArchiveError, expand_archive, is_archive

    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    (work / "out").mkdir()
    job = svc.get_job(job_id)
    config = ModelConfig(**job.model_config_json)
    src = svc.fetch_input(job, work / "in")
    if is_archive(src):
        try:
            files = expand_archive(src, work / "files")
        except ArchiveError as exc:
            svc.finish(job_id, "failed", f"{job.file_name}: {exc}", owner=lease.owner)
            return
    else:
        files = [src]
    tasks = _ensure_tasks(svc, job_id, files, lease)
    if job.attempts > 1:
        _drop_stray_outputs(svc, job_id)
    try:
        if config.review or job.render_request is not None:
            from .rendering import run_review  # it builds on this module's lease and progress

            run_review(svc, job, work, config, tasks, lease)
            return
        _process(svc, job_id, work, config, tasks, lease)
    except _Cancelled:
        _cancelled(svc, job_id, tasks, lease.owner)
        return
    _finish(svc, job_id, lease.owner)


def _process(svc: JobService, job_id: str, work: Path, config: ModelConfig, tasks: list[tuple[int, Path]],
             lease: _Lease) -> None:
    from .segments import drop_segments

    progress = _Progress(svc, job_id, len(tasks), lease)
    run_tag = lease.owner.rsplit(":", 1)[1]
    for index, (task_id, path) in enumerate(tasks):
        task = _task(svc, task_id)
        if task.status in ("completed", "failed"):
            continue
        progress.check_cancel(force=True)
        if lease.drain.requested:
            raise HandBack()
        _set_task(svc, lease, task_id, status="running")
        dst = work / "out" / safe_name(path.name)
        doc = work / "out" / f"{task.index}.detections.gz"
        try:
            report = _anonymize(svc, task, path, dst, config, progress.for_file(index), lease, work, doc)
            lease.check()
            blob = f"{job_id}/{task.index}.{run_tag}{_suffix(path.name)}"  # this run's own name
            svc.store.write(OUTPUT_CONTAINER, blob, dst)
        except (_Cancelled, _LeaseLost, HandBack):
            if not lease.lost.is_set():
                _set_task(svc, lease, task_id, status="pending")
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file fails only its own task
            fail_task(svc, lease, task_id, path, dst, exc)
            drop_segments(svc, task_id)
        else:
            media = getattr(report, "media", None)
            count = getattr(report, "detection_count", None)
            if media == "video":
                count = report.figures.get("detections", count)  # segments: their counts' sum
            doc_blob, summary = store_document(svc, task, run_tag, doc, config, report)
            try:
                _set_task(svc, lease, task_id, status="completed", output_blob=blob, finished_at=utcnow(),
                          detections=count, media=media, detections_blob=doc_blob, summary=summary,
                          media_seconds=report.figures.get("seconds") if media == "video" else None)
            except _LeaseLost:
                for stored in (blob, doc_blob):  # the job is another worker's now: leave no output
                    if stored:
                        svc.store.delete(OUTPUT_CONTAINER, stored)
                raise
            log.info("job %s: file %s done (output %s)", job_id, task.index, blob)
            drop_segments(svc, task_id)
        finally:
            dst.unlink(missing_ok=True)
            doc.unlink(missing_ok=True)
        progress.file_done(index)


def fail_task(svc: JobService, lease: _Lease, task_id: int, path: Path, dst: Path, exc: Exception) -> None:
    """Record why one file failed: the input's fault (MediaError, its message) or Veil's (logged, refundable)."""
    input_fault = _is_media_error(exc)
    if not input_fault:
        log.exception("job %s: file %s failed", lease.job_id, path.name)
    error = (public_message(str(exc), svc.settings.data_dir) if input_fault
             else f"internal error: {_describe(exc, svc)}")
    dst.unlink(missing_ok=True)  # first: on a full disk (the database's too), the room to record it
    _set_task(svc, lease, task_id, status="failed", error=error, system_fault=not input_fault, finished_at=utcnow())


def store_document(svc: JobService, task: Task, run_tag: str, doc: Path, config: ModelConfig,
                   report) -> tuple[str | None, dict | None]:
    """Store a file's detections document beside its output; returns its blob (None when the run made no
    document: a video in segments) and the file's summary (`veil.engine.file_report`)."""
    from ..engine.document import iter_frames
    from ..engine.file_report import summarize
    from ..engine.report import Report

    if not isinstance(report, Report):
        return None, None
    summary = summarize(report, iter_frames(doc) if doc.is_file() else None, config)
    if not doc.is_file():
        return None, summary
    blob = f"{task.job_id}/{task.index}.{run_tag}.detections.gz"
    svc.store.write(OUTPUT_CONTAINER, blob, doc)
    return blob, summary


def _anonymize(svc: JobService, task: Task, path: Path, dst: Path, config: ModelConfig, progress, lease: _Lease,
               work: Path, doc: Path | None = None):
    """The engine on one file (writing its detections document to `doc`); a long video in segments
    (`veil.queue.segments`, no document) when this worker runs several processes (VEIL_WORKER_CONCURRENCY > 1)
    or other Celery workers can take segments."""
    from ..engine.anonymize import anonymize
    from ..engine.probe import media_kind, probe

    limits = MediaLimits.from_settings(svc.settings)
    video = media_kind(path) == "video"
    frames = 1
    if video:  # never decode more frames than pricing counted in these same bytes (their SHA-256 was checked)
        frames = probe(path, limits).frames
        limits = replace(limits, max_video_frames=frames)
    seconds = svc.settings.video_segment_seconds
    parallel = svc.settings.worker_concurrency > 1 or svc.settings.worker == "celery"
    with file_meter("video" if video else "image", frames, progress) as progress:
        if seconds > 0 and parallel and video:
            from ..engine.segments import plan_segments
            from .segments import anonymize_segments

            plan = plan_segments(path, config, seconds, limits, dst, svc.settings.video_segment_max_overhead)
            if len(plan) > 1:
                return anonymize_segments(svc, task, path, dst, config, plan, progress, lease, work)
        return anonymize(path, dst, config, progress=progress, limits=limits, document=doc,
                         image_floor=svc.settings.detections_floor)


def _drop_stray_outputs(svc: JobService, job_id: str) -> None:
    """A run after an interrupted one deletes the outputs an earlier run stored but could not record (the
    database went away, or the worker died, between the two); recorded outputs and stored segments stay."""
    job = svc.get_job(job_id)
    recorded = {blob for t in job.tasks for blob in (t.output_blob, t.detections_blob) if blob}
    for name in svc.store.list(OUTPUT_CONTAINER, f"{job_id}/"):
        if name not in recorded and not re.fullmatch(r"[^/]+/\d+\.segment\d+\..*", name):
            log.info("job %s: deleting %s, stored by an earlier run that could not record it", job_id, name)
            svc.store.delete(OUTPUT_CONTAINER, name)


def _cancelled(svc: JobService, job_id: str, tasks: list[tuple[int, Path]], owner: str) -> None:
    """Cancelled mid-job: keep what the processed files cost (nothing if none completed), refund the rest.
    (A completed file before a cancel means several files: an archive, priced per member.)"""
    from ..jobs.pricing import Prices, cost_of_members
    from .segments import drop_segments

    for task_id, _ in tasks:
        drop_segments(svc, task_id)
    status = {t.id: t.status for t in svc.get_job(job_id).tasks}
    processed = [path for task_id, path in tasks if status[task_id] in ("completed", "failed")]
    keep = 0
    if any(status[task_id] == "completed" for task_id, _ in tasks):
        keep = cost_of_members(processed, Prices.from_settings(svc.settings), MediaLimits.from_settings(svc.settings))
    svc.finish(job_id, "cancelled", f"cancelled by the client after {len(processed)} of {len(tasks)} files",
               refund_reason=f"job cancelled: {len(tasks) - len(processed)} of {len(tasks)} files not processed",
               keep=keep, owner=owner)


def _finish(svc: JobService, job_id: str, owner: str) -> None:
    tasks = svc.get_job(job_id).tasks
    done = [t for t in tasks if t.status == "completed"]
    failed = [t for t in tasks if t.status == "failed"]
    errors = "; ".join(f"{t.input_name}: {t.error}" for t in failed)
    if done:
        text = f"completed: {len(done)} of {len(tasks)} files anonymized"
        svc.finish(job_id, "completed", f"{text}; failed: {errors}" if failed else text, owner=owner)
    elif any(t.system_fault for t in failed):
        svc.finish(job_id, "failed", f"no file could be processed: {errors}",
                   refund_reason="job failed through no fault of its input", owner=owner)
    else:
        svc.finish(job_id, "failed", f"no file could be processed: {errors}", owner=owner)


def _ensure_tasks(svc: JobService, job_id: str, files: list[Path], lease: _Lease) -> list[tuple[int, Path]]:
    """One Task per file, created on the first run and matched by name on a resumed run."""
    with svc.db.begin() as session:
        if session.scalar(select(Job.id).where(holds(job_id, lease.owner)).with_for_update()) is None:
            raise _LeaseLost()
        existing = {t.input_name: t for t in session.scalars(select(Task).where(Task.job_id == job_id))}
        taken = {t.output_file.casefold() for t in existing.values()}
        pairs = []
        for index, path in enumerate(files):
            task = existing.get(path.name)
            if task is None:
                task = Task(job_id=job_id, index=index, input_name=path.name,
                            output_file=output_name(path.name, taken))
                session.add(task)
                session.flush()
            pairs.append((task.id, path))
    return pairs


def _task(svc: JobService, task_id: int) -> Task:
    with svc.db() as session:
        return session.get(Task, task_id)


def _set_task(svc: JobService, lease: _Lease, task_id: int, **values) -> None:
    """Update a task, only while this worker holds the job's lease."""
    with svc.db.begin() as session:
        held = select(Job.id).where(holds(lease.job_id, lease.owner)).scalar_subquery()
        result = session.execute(update(Task).where(Task.id == task_id, Task.job_id == held).values(**values))
    if result.rowcount != 1:
        lease.lost.set()
        raise _LeaseLost()


def _suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 10 else ""


def _describe(exc: Exception, svc: JobService) -> str:
    """An unexpected error for the client: its type and text, without file names or server paths (nor the
    statement and help link SQLAlchemy adds to a database driver's error)."""
    exc = getattr(exc, "orig", None) or exc
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {public_message(text, svc.settings.data_dir)}"


def _is_media_error(exc: Exception) -> bool:
    from ..engine.errors import MediaError

    return isinstance(exc, MediaError)


class _Progress:
    """Maps per-file progress to the job's 0..1 progress; writes it at most twice a second and
    checks for a cancel request every few seconds (raising _Cancelled inside the engine's callback)."""

    def __init__(self, svc: JobService, job_id: str, files: int, lease: _Lease) -> None:
        self.svc, self.job_id, self.files, self.lease = svc, job_id, max(files, 1), lease
        self._written = -1.0
        self._last_write = self._last_check = 0.0

    def for_file(self, index: int):
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
            result = session.execute(update(Job).where(holds(self.job_id, self.lease.owner))
                                     .values(progress=case((Job.progress < value, value), else_=Job.progress)))
        if result.rowcount != 1:
            self.lease.lost.set()
            raise _LeaseLost()

    def check_cancel(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < 2.0:
            return
        self._last_check = now
        with self.svc.db() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise _Cancelled()
