"""`process_job(job_id, service)`: a job's life on a worker, run by the embedded worker threads and by Celery
(`veil.queue` only carries job ids here).

A job's input (image, video or archive of them) becomes one Task per file; each file is anonymized
by the engine with the job's ModelConfig and its output stored as a blob. A file the engine rejects
(MediaError: corrupt, unsupported) fails only its own task. The job completes when at least one file
succeeded and fails (job_status 200) only when none did. Finished tasks are never redone: a job
interrupted by a crash resumes at the start of the file it was working on. An archive of photos runs them
side by side, one core each (`_Ahead`: bench/bench_archive.py, 1.24x on openalpr_plates with 2 cores); the files
are still stored, recorded and charged one by one, in order.

The run holds the job's lease throughout (`veil.jobs.running`: every row it writes is conditional on it);
a long video goes in segments (`veil.jobs.segments`); review and render runs are `veil.jobs.rendering`'s.
"""

from __future__ import annotations

import contextvars
import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..db.models import Task, utcnow
from ..engine import anonymize as engine_anonymize  # a module: tests hold the engine through its attribute
from ..engine.config import MediaLimits, ModelConfig
from ..engine.document import iter_frames
from ..engine.file_report import summarize
from ..engine.probe import media_kind, probe
from ..engine.report import Report
from ..engine.runtime import physical_cores, session_threads
from ..engine.segments import plan_segments
from ..logs import bind_key, current_job, name_key, unbind_key
from ..metrics import HANDED_BACK, file_meter
from ..settings import engine_settings
from .archive import ArchiveError, expand_archive, is_archive
from .drain import Drain, HandBack, process_drain
from .intake import InputChanged
from .names import safe_name
from .pricing import Prices, cost_of_members
from .rendering import run_review
from .running import (
    Cancelled,
    JobLease,
    LeaseLost,
    Progress,
    describe_error,
    ensure_tasks,
    fail_task,
    get_task,
    new_owner,
    output_suffix,
    run_tag,
    set_task,
)
from .segments import anonymize_segments, drop_segments
from .service import OUTPUT_CONTAINER, JobService

log = logging.getLogger(__name__)
PHOTO_THREADS_MAX = 8  # photos of one archive in memory at once, at most


def process_job(job_id: str, svc: JobService, drain: Drain | None = None) -> bool:
    """Claim a job and run it to a final state; does nothing (False) when it is finished or another
    worker holds its lease (a message delivered twice). When `drain` (a shutdown; default this process's)
    begins, the job is handed back (`veil.jobs.drain`) unless its files finish within the grace period."""
    drain = drain or process_drain
    owner = new_owner()
    if not svc.leases.claim(job_id, owner):
        log.info("job %s: not taken (finished, or running under another worker's lease)", job_id)
        return False
    token, key_token = current_job.set(job_id), bind_key()
    work = svc.settings.data_dir / "work" / f"{job_id}.{run_tag(owner)}"
    try:
        name_key(svc.get_job(job_id).key_id)
        log.info("job %s: started by %s", job_id, owner)
        with JobLease(svc, job_id, owner, drain) as lease:
            _run(svc, job_id, work, lease)
    except HandBack:
        _hand_back(svc, job_id, owner)
    except InputChanged as exc:
        log.warning("job %s: %s", job_id, exc)
        svc.finish(
            job_id,
            "failed",
            f"{exc}; nothing was processed and the credits were refunded",
            refund_reason="input changed after it was priced",
            owner=owner,
        )
    except LeaseLost:
        log.warning("job %s: stopped; another worker holds its lease", job_id)
    except Exception as exc:  # noqa: BLE001 - never leave a job running because of a bug or an outage
        log.exception("job %s failed", job_id)
        shutil.rmtree(work, ignore_errors=True)  # first: on a full disk, the room to record the failure
        svc.finish(
            job_id,
            "failed",
            f"internal error: {describe_error(exc, svc)}",
            refund_reason="job failed through no fault of its input",
            owner=owner,
            keep=_kept(svc, job_id),
        )
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
        log.warning(
            "job %s: handed back at shutdown with %d of %d files unfinished (progress %d %%, kept); lease "
            "released, queued for another worker",
            job_id,
            left,
            len(job.tasks),
            round(job.progress * 100),
        )


def _run(svc: JobService, job_id: str, work: Path, lease: JobLease) -> None:
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
    tasks = ensure_tasks(svc, job_id, files, lease)
    if job.attempts > 1:
        _drop_stray_outputs(svc, job_id)
    try:
        if config.review or job.render_request is not None:
            run_review(svc, job, work, config, tasks, lease)
            return
        _process(svc, job_id, work, config, tasks, lease)
    except Cancelled:
        _cancelled(svc, job_id, tasks, lease.owner)
        return
    _finish(svc, job_id, lease.owner)


def _process(
    svc: JobService, job_id: str, work: Path, config: ModelConfig, tasks: list[tuple[int, Path]], lease: JobLease
) -> None:
    progress = Progress(svc, job_id, len(tasks), lease)
    tag = run_tag(lease.owner)
    todo = [(index, get_task(svc, task_id), path) for index, (task_id, path) in enumerate(tasks)]
    todo = [(index, task, path) for index, task, path in todo if task.status not in ("completed", "failed")]
    ahead = _Ahead(_photo_threads(svc, [path for _, _, path in todo]))
    started = 0

    def outputs(task: Task, path: Path) -> tuple[Path, Path]:
        return work / "out" / f"{task.index}-{safe_name(path.name)}", work / "out" / f"{task.index}.detections.gz"

    def start(index: int, task: Task, path: Path) -> None:
        set_task(svc, lease, task.id, status="running")
        dst, doc = outputs(task, path)
        file_progress = progress.for_file(index)
        ahead.start(task.id, lambda: _anonymize(svc, task, path, dst, config, file_progress, lease, work, doc))

    try:
        for position, (index, task, path) in enumerate(todo):
            progress.check_cancel(force=True)
            if lease.drain.requested:
                raise HandBack()
            while started <= position or (started < len(todo) and ahead.room()):
                start(*todo[started])
                started += 1
            dst, doc = outputs(task, path)
            _finish_file(svc, job_id, tag, config, lease, task, path, dst, doc, partial(ahead.result, task.id))
            progress.file_done(index)
    finally:
        for _, task, path in todo:
            if ahead.abandon(task.id):  # started beside a file that stopped the run: it runs again next time
                if not lease.lost.is_set():
                    set_task(svc, lease, task.id, status="pending")
                for left in outputs(task, path):
                    left.unlink(missing_ok=True)
        ahead.close()


def _finish_file(
    svc: JobService,
    job_id: str,
    tag: str,
    config: ModelConfig,
    lease: JobLease,
    task: Task,
    path: Path,
    dst: Path,
    doc: Path,
    run: Callable[[], Report],
) -> None:
    """Take one file's engine result (`run`), store its output and record the task; a bad file fails only itself."""
    task_id = task.id
    try:
        report = run()
        lease.check()
        blob = f"{job_id}/{task.index}.{tag}{output_suffix(path.name)}"  # this run's own name
        svc.store.write(OUTPUT_CONTAINER, blob, dst)
    except (Cancelled, LeaseLost, HandBack):
        if not lease.lost.is_set():
            set_task(svc, lease, task_id, status="pending")
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file fails only its own task
        fail_task(svc, lease, task_id, path, dst, exc)
        drop_segments(svc, task_id)
    else:
        media = getattr(report, "media", None)
        count = getattr(report, "detection_count", None)
        if media == "video":
            count = report.figures.get("detections", count)  # segments: their counts' sum
        doc_blob, summary = store_document(svc, task, tag, doc, config, report)
        try:
            set_task(
                svc,
                lease,
                task_id,
                status="completed",
                output_blob=blob,
                finished_at=utcnow(),
                detections=count,
                media=media,
                detections_blob=doc_blob,
                summary=summary,
                media_seconds=report.figures.get("seconds") if media == "video" else None,
            )
        except LeaseLost:
            for stored in (blob, doc_blob):  # the job is another worker's now: leave no output
                if stored:
                    svc.store.delete(OUTPUT_CONTAINER, stored)
            raise
        log.info("job %s: file %s done (output %s)", job_id, task.index, blob)
        drop_segments(svc, task_id)
    finally:
        dst.unlink(missing_ok=True)
        doc.unlink(missing_ok=True)


def _photo_threads(svc: JobService, paths: list[Path]) -> int:
    """How many photos of an archive run side by side, each on one core (0: one file at a time, the engine on
    every core): this worker's share of the cores, when there are two photos or more and nothing else."""
    cores = physical_cores() // max(1, svc.settings.worker_concurrency)
    if cores < 2 or len(paths) < 2 or engine_settings().ort_threads is not None:
        return 0
    try:
        if any(media_kind(path) != "image" for path in paths):
            return 0
    except Exception:  # noqa: BLE001 - not media: the engine says so, file by file
        return 0
    return min(cores, len(paths), PHOTO_THREADS_MAX)


class _Ahead:
    """Engine work started ahead of its turn: with ``threads``, up to that many photos run side by side in
    threads (sessions on one thread each, `runtime.session_threads`) while earlier files are stored; without,
    each file's work runs when its result is asked for."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="veil-photo") if threads else None
        self._work: dict[int, Future | Callable] = {}

    def room(self) -> bool:
        return len(self._work) < self.threads

    def start(self, key: int, work: Callable[[], Report]) -> None:
        if self._pool is None:
            self._work[key] = work
        else:
            self._work[key] = self._pool.submit(contextvars.copy_context().run, _on_one_thread, work)

    def result(self, key: int) -> Report:
        work = self._work.pop(key)
        return work.result() if isinstance(work, Future) else work()

    def abandon(self, key: int) -> bool:
        """Forget ``key``'s work (waiting for it if it runs); False when it was not started or already taken."""
        work = self._work.pop(key, None)
        if isinstance(work, Future):
            wait([work])
        return work is not None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _on_one_thread(work: Callable[[], Report]) -> Report:
    with session_threads(1):
        return work()


def store_document(
    svc: JobService, task: Task, tag: str, doc: Path, config: ModelConfig, report
) -> tuple[str | None, dict | None]:
    """Store a file's detections document beside its output; returns its blob (None when the run made no
    document: a video in segments) and the file's summary (`veil.engine.file_report`)."""
    if not isinstance(report, Report):
        return None, None
    summary = summarize(report, iter_frames(doc) if doc.is_file() else None, config)
    if not doc.is_file():
        return None, summary
    blob = f"{task.job_id}/{task.index}.{tag}.detections.gz"
    svc.store.write(OUTPUT_CONTAINER, blob, doc)
    return blob, summary


def _anonymize(
    svc: JobService,
    task: Task,
    path: Path,
    dst: Path,
    config: ModelConfig,
    progress,
    lease: JobLease,
    work: Path,
    doc: Path | None = None,
):
    """The engine on one file (writing its detections document to `doc`); a long video in segments
    (`veil.jobs.segments`, no document) when this worker runs several processes (VEIL_WORKER_CONCURRENCY > 1)
    or other Celery workers can take segments."""
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
            plan = plan_segments(path, config, seconds, limits, dst, svc.settings.video_segment_max_overhead)
            if len(plan) > 1:
                return anonymize_segments(svc, task, path, dst, config, plan, progress, lease, work)
        return engine_anonymize.anonymize(
            path, dst, config, progress=progress, limits=limits, document=doc, image_floor=svc.settings.detections_floor
        )


def _drop_stray_outputs(svc: JobService, job_id: str) -> None:
    """A run after an interrupted one deletes the outputs an earlier run stored but could not record (the
    database went away, or the worker died, between the two); recorded outputs and stored segments stay."""
    job = svc.get_job(job_id)
    recorded = {blob for t in job.tasks for blob in t.stored()}
    for name in svc.store.list(OUTPUT_CONTAINER, f"{job_id}/"):
        if name not in recorded and not re.fullmatch(r"[^/]+/\d+\.segment\d+\..*", name):
            log.info("job %s: deleting %s, stored by an earlier run that could not record it", job_id, name)
            svc.store.delete(OUTPUT_CONTAINER, name)


def _cancelled(svc: JobService, job_id: str, tasks: list[tuple[int, Path]], owner: str) -> None:
    """Cancelled mid-job: keep what the processed files cost (nothing if none completed), refund the rest.
    (A completed file before a cancel means several files: an archive, priced per member.)"""
    for task_id, _ in tasks:
        drop_segments(svc, task_id)
    status = {t.id: t.status for t in svc.get_job(job_id).tasks}
    processed = [path for task_id, path in tasks if status[task_id] in ("completed", "failed")]
    keep = 0
    if any(status[task_id] == "completed" for task_id, _ in tasks):
        keep = cost_of_members(processed, Prices.from_settings(svc.settings), MediaLimits.from_settings(svc.settings))
    svc.finish(
        job_id,
        "cancelled",
        f"cancelled by the client after {len(processed)} of {len(tasks)} files",
        refund_reason=f"job cancelled: {len(tasks) - len(processed)} of {len(tasks)} files not processed",
        keep=keep,
        owner=owner,
    )


def _finish(svc: JobService, job_id: str, owner: str) -> None:
    tasks = svc.get_job(job_id).tasks
    done = [t for t in tasks if t.status == "completed"]
    failed = [t for t in tasks if t.status == "failed"]
    errors = "; ".join(f"{t.input_name}: {t.error}" for t in failed)
    if done:
        text = f"completed: {len(done)} of {len(tasks)} files anonymized"
        svc.finish(job_id, "completed", f"{text}; failed: {errors}" if failed else text, owner=owner)
    elif any(t.system_fault for t in failed):
        svc.finish(
            job_id,
            "failed",
            f"no file could be processed: {errors}",
            refund_reason="job failed through no fault of its input",
            owner=owner,
        )
    else:
        svc.finish(job_id, "failed", f"no file could be processed: {errors}", owner=owner)
