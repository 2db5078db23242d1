"""A long video task in segments (`veil.engine.segments`): any worker may run a segment, each finished one
is kept, and the output is stitched once all are done.

The worker holding the job's lease plans the video's segments and records them (`VideoSegment`, once per
task: a resumed run finds them). With Celery it sends each unfinished segment as a task of its own
(`veil.process_segment`, sent by `JobService.dispatch_segment`), which any worker takes (`process_segment`); it
also runs segments itself in spawned processes: at most `VEIL_WORKER_CONCURRENCY` at once in one worker
process, over all the jobs its threads hold (`segment_slots`). A segment is taken with one conditional UPDATE
that writes its lease (owner, expiry; renewed while it runs), like a job: a segment whose worker died is taken again
once its lease ran out (at the next start of an embedded `veil serve`, at once). Each finished segment's
file goes to the output container and its row is marked completed under its lease, so it is never run
again. Progress is the sum of the segments' (weighted by frames; it only grows within a run); a cancel
stops every running segment at its next frame; a segment the engine rejects fails the file. When all are
completed, the segment files are joined into the task's output without re-encoding and then removed; a
join that fails is Veil's fault (its own files), never the input's: the file fails as an internal error (refunded).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import wait
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select, update

from ..db.models import Job, VideoSegment, utcnow
from ..db.session import changed
from ..engine.config import MediaLimits, ModelConfig
from ..engine.errors import MediaError
from ..engine.report import Report
from ..engine.segments import Segment, SegmentPool, run_segment, stitch
from .archive import expand_archive, is_archive
from .drain import HandBack, process_drain
from .names import public_message
from .running import new_owner, run_tag
from .service import OUTPUT_CONTAINER, JobService

log = logging.getLogger(__name__)

_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def segment_slots(concurrency: int) -> threading.BoundedSemaphore:
    """The segments this worker process runs at once, over all the jobs its threads hold: each of
    `concurrency` jobs running a long video would otherwise start `concurrency` segments of its own."""
    with _slots_lock:
        return _slots.setdefault(concurrency, threading.BoundedSemaphore(concurrency))


def anonymize_segments(
    svc: JobService, task, path: Path, dst: Path, config: ModelConfig, plan: list[Segment], progress, lease, work: Path
) -> Report:
    """Anonymize the video `path` of `task` into `dst` segment by segment (see the module docstring);
    the report has the figures and `figures["detections"]` (not the frames)."""
    rows = _ensure_rows(svc, lease, task.id, plan)
    folder = work / f"segments-{task.index}"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {s.index: folder / f"{s.index:05d}.mp4" for s in plan}
    limits = MediaLimits.from_settings(svc.settings)
    total = sum(s.analysed for s in plan)
    told, renewed = 0.0, time.monotonic()
    if svc.dispatch_segment is not None:  # Celery: other workers may take segments too
        for row in rows.values():
            if row.status != "completed":
                svc.dispatch_segment(task.job_id, task.id, row.index)
    slots = max(1, min(svc.settings.worker_concurrency, len(plan)))
    free = segment_slots(svc.settings.worker_concurrency)
    mine: dict = {}  # future -> segment, run by this worker's processes; each holds one of `free`
    try:
        with SegmentPool(slots, len(plan)) as pool:
            while True:
                rows = _rows(svc, task.id)
                failed = [r for r in rows.values() if r.status == "failed"]
                if failed:
                    raise MediaError(failed[0].error or "a segment could not be processed")
                if all(r.status == "completed" for r in rows.values()):
                    break
                lease.drain.check()  # shutting down: the grace period is over
                if lease.drain.requested and not mine:
                    raise HandBack()  # shutting down: this worker's segments finished, no new one is taken
                while (
                    len(mine) < slots
                    and not lease.drain.requested
                    and (segment := _claim_in_slot(svc, task.id, lease.owner, plan, free)) is not None
                ):
                    try:
                        mine[pool.submit(path, segment, parts[segment.index], config, limits)] = segment
                    except BaseException:
                        free.release()
                        raise
                if mine:
                    finished, _ = wait(mine, timeout=0.5)
                else:
                    finished = set()
                    time.sleep(0.5)  # the rest run on other workers or wait for a free slot
                for future in finished:
                    segment = mine.pop(future)
                    free.release()
                    report = future.result()  # a failed segment fails the file (the others stop)
                    _store(svc, task, segment.index, lease.owner, parts[segment.index], report.detection_count)
                    log.info(
                        "job %s: file %s segment %d of %d done", task.job_id, task.index, segment.index + 1, len(plan)
                    )
                if time.monotonic() - renewed > svc.settings.job_lease_seconds / 3:
                    renewed = time.monotonic()
                    _renew(svc, task.id, lease.owner)
                own = {s.index for s in mine.values()}
                value = (
                    sum(
                        s.analysed
                        * (
                            1.0
                            if rows[s.index].status == "completed"
                            else pool.progress(s.index)
                            if s.index in own
                            else rows[s.index].progress or 0.0
                        )
                        for s in plan
                    )
                    / total
                )
                if value > told:
                    told = value
                    progress(min(value, 0.99))
    finally:
        for _ in mine:  # segments stopped by the pool's exit
            free.release()
    for index, part in parts.items():
        if not part.exists():  # finished by another worker or an earlier run
            with svc.store.open_read(OUTPUT_CONTAINER, rows[index].blob) as src, part.open("wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
    try:
        report = stitch(path, [parts[s.index] for s in plan], dst, config, limits)
    except MediaError as exc:  # the input was read whole already: its segments are Veil's files, the fault Veil's
        raise StitchFailed(f"the video's segments could not be joined ({exc})") from exc
    report.figures["detections"] = sum(r.detections or 0 for r in rows.values())
    shutil.rmtree(folder, ignore_errors=True)
    return report


class StitchFailed(RuntimeError):
    """Joining the finished segments failed: a fault of Veil (its own segment files), never of the input, so
    the file fails as an internal error and its job is refunded."""


def _claim_in_slot(
    svc: JobService, task_id: int, owner: str, plan: list[Segment], free: threading.BoundedSemaphore
) -> Segment | None:
    """`_claim` with one of this process's free segment slots held for the segment; None (and the slot
    given back) when no slot is free or no segment is left to take."""
    if not free.acquire(blocking=False):
        return None
    try:
        segment = _claim(svc, task_id, owner, plan)
    except BaseException:
        free.release()
        raise
    if segment is None:
        free.release()
    return segment


def process_segment(job_id: str, task_id: int, index: int, svc: JobService) -> bool:
    """Celery: run one segment of a running job's video if nobody else has it (False when not taken)."""
    owner = new_owner()
    if process_drain.requested:
        return False  # shutting down: the job's own worker, or the next, runs it
    segment = _claim(svc, task_id, owner, index=index)
    if segment is None:
        return False
    work = svc.settings.data_dir / "work" / f"{job_id}.{task_id}.{index}.{run_tag(owner)}"
    last = [0.0]

    def beat(fraction: float) -> None:
        if time.monotonic() - last[0] < min(2.0, svc.settings.job_lease_seconds / 3):
            return
        last[0] = time.monotonic()
        with svc.db.begin() as session:
            held = changed(
                session,
                update(VideoSegment)
                .where(_owned(task_id, owner), VideoSegment.index == index)
                .values(progress=fraction, lease_expires_at=_expiry(svc)),
            )
            job = session.get(Job, job_id)
        if not held or job is None or job.status != "running" or job.cancel_requested or process_drain.overdue():
            raise _Released()

    try:
        job = svc.get_job(job_id)
        task = next(t for t in job.tasks if t.id == task_id)
        (work / "in").mkdir(parents=True)
        src = svc.fetch_input(job, work / "in")
        if is_archive(src):
            src = next(p for p in expand_archive(src, work / "files") if p.name == task.input_name)
        report = run_segment(
            src,
            segment,
            work / "segment.mp4",
            ModelConfig(**job.model_config_json),
            beat,
            MediaLimits.from_settings(svc.settings),
        )
        _store(svc, task, index, owner, work / "segment.mp4", report.detection_count)
        return True
    except MediaError as exc:
        with svc.db.begin() as session:
            session.execute(
                update(VideoSegment)
                .where(_owned(task_id, owner), VideoSegment.index == index)
                .values(status="failed", error=public_message(str(exc), svc.settings.data_dir))
            )
    except Exception:  # noqa: BLE001 - stopped (cancel, lease), or an outage: another worker takes it again
        log.info("job %s: segment %d of file %s released", job_id, index, task_id, exc_info=True)
        with svc.db.begin() as session:
            session.execute(
                update(VideoSegment)
                .where(_owned(task_id, owner), VideoSegment.index == index)
                .values(status="pending", lease_owner=None, lease_expires_at=None)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return False


class _Released(Exception):
    """The segment's lease is gone, or its job stopped running."""


def _claim(
    svc: JobService, task_id: int, owner: str, plan: list[Segment] | None = None, index: int | None = None
) -> Segment | None:
    """Take a pending segment of the task (or one whose lease ran out: its worker died), `index` or the
    first; its window, or None."""
    now = utcnow()
    free = (VideoSegment.status == "pending") | (
        (VideoSegment.status == "running") & (VideoSegment.lease_expires_at < now)
    )
    with svc.db.begin() as session:
        query = select(VideoSegment.id, VideoSegment.window).where(VideoSegment.task_id == task_id, free)
        if index is not None:
            query = query.where(VideoSegment.index == index)
        for row_id, window in session.execute(query.order_by(VideoSegment.index)).all():
            taken = changed(
                session,
                update(VideoSegment)
                .where(VideoSegment.id == row_id, free)
                .values(
                    status="running",
                    lease_owner=owner,
                    lease_expires_at=_expiry(svc),
                    attempts=VideoSegment.attempts + 1,
                ),
            )
            if taken:
                return Segment(**window)
    return None


def _store(svc: JobService, task, index: int, owner: str, part: Path, detections: int) -> None:
    """A finished segment's file into the output container, its row completed (while `owner` has it)."""
    blob = f"{task.job_id}/{task.index}.segment{index}.{run_tag(owner)}.mp4"
    svc.store.write(OUTPUT_CONTAINER, blob, part)
    with svc.db.begin() as session:
        done = changed(
            session,
            update(VideoSegment)
            .where(_owned(task.id, owner), VideoSegment.index == index)
            .values(status="completed", blob=blob, detections=detections, progress=1.0, finished_at=utcnow()),
        )
    if not done:
        svc.store.delete(OUTPUT_CONTAINER, blob)
        raise _Released()


def _renew(svc: JobService, task_id: int, owner: str) -> None:
    with svc.db.begin() as session:
        session.execute(update(VideoSegment).where(_owned(task_id, owner)).values(lease_expires_at=_expiry(svc)))


def _owned(task_id: int, owner: str):
    return (VideoSegment.task_id == task_id) & (VideoSegment.status == "running") & (VideoSegment.lease_owner == owner)


def _expiry(svc: JobService):
    return utcnow() + timedelta(seconds=svc.settings.job_lease_seconds)


def _rows(svc: JobService, task_id: int) -> dict[int, VideoSegment]:
    with svc.db() as session:
        rows = list(session.scalars(select(VideoSegment).where(VideoSegment.task_id == task_id)))
        session.expunge_all()
    return {row.index: row for row in rows}


def drop_segments(svc: JobService, task_id: int) -> None:
    """Remove a finished task's segment rows and files (its output is stitched, or it failed)."""
    with svc.db.begin() as session:
        blobs = list(session.scalars(select(VideoSegment.blob).where(VideoSegment.task_id == task_id)))
        session.execute(delete(VideoSegment).where(VideoSegment.task_id == task_id))
    for blob in blobs:
        if blob:
            svc.store.delete(OUTPUT_CONTAINER, blob)


def _ensure_rows(svc: JobService, lease, task_id: int, plan: list[Segment]) -> dict[int, VideoSegment]:
    """The task's segment rows, created on its first run; recreated when the plan changed (another
    VEIL_VIDEO_SEGMENT_SECONDS)."""
    windows = [s.to_json() for s in plan]
    stale: list[str] = []
    with svc.db.begin() as session:
        lease.lock(session)
        rows = list(
            session.scalars(select(VideoSegment).where(VideoSegment.task_id == task_id).order_by(VideoSegment.index))
        )
        if [r.window for r in rows] != windows:
            stale = [r.blob for r in rows if r.blob]
            for row in rows:
                session.delete(row)
            session.flush()
            rows = [
                VideoSegment(task_id=task_id, index=s.index, window=w, status="pending", attempts=0)
                for s, w in zip(plan, windows)
            ]
            session.add_all(rows)
            session.flush()
        session.expunge_all()
    for blob in stale:
        svc.store.delete(OUTPUT_CONTAINER, blob)
    return {row.index: row for row in rows}
