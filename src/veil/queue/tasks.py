"""`process_job(job_id)`: the one task function, run by the embedded worker threads and by Celery.

A job's input (image, video or archive of them) becomes one Task per file; each file is anonymized
by the engine with the job's ModelConfig and its output stored as a blob. A file the engine rejects
(MediaError: corrupt, unsupported) fails only its own task. The job completes when at least one file
succeeded and fails (job_status 200) only when none did. Finished tasks are never redone: a job
interrupted by a crash resumes at the start of the file it was working on.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path, PurePosixPath

from sqlalchemy import select, update

from ..db.models import Job, Task, utcnow
from ..engine.config import ModelConfig
from ..jobs.service import OUTPUT_CONTAINER, InputChanged, JobService, output_name, safe_name

log = logging.getLogger(__name__)

_default_service: JobService | None = None


class _Cancelled(Exception):
    pass


def default_service() -> JobService:
    """The service built from the environment (`VEIL_*`), for Celery workers."""
    global _default_service
    if _default_service is None:
        from ..jobs.service import build_service
        from ..settings import Settings

        _default_service = build_service(Settings())
    return _default_service


def process_job(job_id: str, service: JobService | None = None) -> None:
    """Claim a queued job and run it to a final state; does nothing if another worker has it."""
    svc = service or default_service()
    if not svc.claim(job_id):
        return
    work = svc.settings.data_dir / "work" / job_id
    try:
        _run(svc, job_id, work)
    except _Cancelled:
        svc.finish(job_id, "cancelled", "cancelled by the client")
    except InputChanged as exc:
        log.warning("job %s: %s", job_id, exc)
        svc.finish(job_id, "failed", f"{exc}; nothing was processed and the credits were refunded",
                   refund_reason="input changed after it was priced")
    except Exception as exc:  # noqa: BLE001 - never leave a job running because of a bug or an outage
        log.exception("job %s failed", job_id)
        svc.finish(job_id, "failed", f"internal error: {type(exc).__name__}: {exc}",
                   refund_reason="job failed through no fault of its input")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(svc: JobService, job_id: str, work: Path) -> None:
    from ..engine.anonymize import anonymize
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
            svc.finish(job_id, "failed", f"{job.file_name}: {exc}")
            return
    else:
        files = [src]
    tasks = _ensure_tasks(svc, job_id, files)
    progress = _Progress(svc, job_id, len(tasks))
    for index, (task_id, path) in enumerate(tasks):
        task = _task(svc, task_id)
        if task.status in ("completed", "failed"):
            continue
        progress.check_cancel(force=True)
        _set_task(svc, task_id, status="running")
        dst = work / "out" / safe_name(path.name)
        try:
            report = anonymize(path, dst, config, progress=progress.for_file(index))
            blob = f"{job_id}/{task.index}{_suffix(path.name)}"
            svc.store.write(OUTPUT_CONTAINER, blob, dst)
        except _Cancelled:
            _set_task(svc, task_id, status="pending")
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file fails only its own task
            input_fault = _is_media_error(exc)
            if not input_fault:
                log.exception("job %s: file %s failed", job_id, path.name)
            error = str(exc) if input_fault else f"internal error: {type(exc).__name__}: {exc}"
            _set_task(svc, task_id, status="failed", error=error, system_fault=not input_fault,
                      finished_at=utcnow())
        else:
            _set_task(svc, task_id, status="completed", output_blob=blob, finished_at=utcnow(),
                      detections=getattr(report, "detection_count", None))
        finally:
            dst.unlink(missing_ok=True)
        progress.file_done(index)
    _finish(svc, job_id)


def _finish(svc: JobService, job_id: str) -> None:
    tasks = svc.get_job(job_id).tasks
    done = [t for t in tasks if t.status == "completed"]
    failed = [t for t in tasks if t.status == "failed"]
    errors = "; ".join(f"{t.input_name}: {t.error}" for t in failed)
    if done:
        text = f"completed: {len(done)} of {len(tasks)} files anonymized"
        svc.finish(job_id, "completed", f"{text}; failed: {errors}" if failed else text)
    elif any(t.system_fault for t in failed):
        svc.finish(job_id, "failed", f"no file could be processed: {errors}",
                   refund_reason="job failed through no fault of its input")
    else:
        svc.finish(job_id, "failed", f"no file could be processed: {errors}")


def _ensure_tasks(svc: JobService, job_id: str, files: list[Path]) -> list[tuple[int, Path]]:
    """One Task per file, created on the first run and matched by name on a resumed run."""
    with svc.db.begin() as session:
        existing = {t.input_name: t for t in session.scalars(select(Task).where(Task.job_id == job_id))}
        pairs = []
        for index, path in enumerate(files):
            task = existing.get(path.name)
            if task is None:
                task = Task(job_id=job_id, index=index, input_name=path.name, output_file=output_name(path.name))
                session.add(task)
                session.flush()
            pairs.append((task.id, path))
    return pairs


def _task(svc: JobService, task_id: int) -> Task:
    with svc.db() as session:
        return session.get(Task, task_id)


def _set_task(svc: JobService, task_id: int, **values) -> None:
    with svc.db.begin() as session:
        session.execute(update(Task).where(Task.id == task_id).values(**values))


def _suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 10 else ""


def _is_media_error(exc: Exception) -> bool:
    from ..engine.errors import MediaError

    return isinstance(exc, MediaError)


class _Progress:
    """Maps per-file progress to the job's 0..1 progress; writes it at most twice a second and
    checks for a cancel request every few seconds (raising _Cancelled inside the engine's callback)."""

    def __init__(self, svc: JobService, job_id: str, files: int) -> None:
        self.svc, self.job_id, self.files = svc, job_id, max(files, 1)
        self._written = -1.0
        self._last_write = self._last_check = 0.0

    def for_file(self, index: int):
        def report(fraction: float) -> None:
            self._write((index + min(max(fraction, 0.0), 1.0)) / self.files)
            self.check_cancel()
        return report

    def file_done(self, index: int) -> None:
        self._write((index + 1) / self.files, force=True)

    def _write(self, value: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (int(value * 100) == int(self._written * 100) or now - self._last_write < 0.5):
            return
        self._written, self._last_write = value, now
        with self.svc.db.begin() as session:
            session.execute(update(Job).where(Job.id == self.job_id, Job.status == "running")
                            .values(progress=min(value, 0.99)))

    def check_cancel(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < 2.0:
            return
        self._last_check = now
        with self.svc.db() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise _Cancelled()
