"""A long video task in segments (`veil.engine.segments`): run them in parallel worker processes, keep each
finished one, stitch once all are done.

The worker holding the job's lease plans the video's segments and records them (`VideoSegment`, once per
task: a resumed run finds them). It runs the segments not yet completed in `VEIL_WORKER_CONCURRENCY`
spawned processes; each finished segment's file goes to the output container and its row is marked
completed under the job's lease, so a run that dies (or loses its lease) leaves finished segments for the
next run, which runs only the others. Progress is the sum of the segments' (weighted by frames; it only
grows within a run); a cancel or a lost lease stops every running segment at its next frame. When all are
completed, the segment files are joined into the task's output without re-encoding and removed.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import wait
from pathlib import Path

from sqlalchemy import delete, select, update

from ..db.models import Job, VideoSegment, utcnow
from ..engine.config import ModelConfig
from ..engine.report import Report
from ..engine.segments import Segment, SegmentPool, stitch
from ..jobs.leases import holds
from ..jobs.service import OUTPUT_CONTAINER, JobService

log = logging.getLogger(__name__)


def anonymize_segments(svc: JobService, task, path: Path, dst: Path, config: ModelConfig, plan: list[Segment],
                       progress, lease, work: Path) -> Report:
    """Anonymize the video `path` of `task` into `dst` segment by segment (see the module docstring);
    the report has the figures and `figures["detections"]` (not the frames)."""
    rows = _ensure_rows(svc, lease, task.id, plan)
    folder = work / f"segments-{task.index}"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {s.index: folder / f"{s.index:05d}.mp4" for s in plan}
    done = {i for i, row in rows.items() if row.status == "completed"}
    detections = {i: rows[i].detections or 0 for i in done}
    limits = svc.settings.media_limits()
    run_tag = lease.owner.rsplit(":", 1)[1]
    total = sum(s.analysed for s in plan)
    told = 0.0
    todo = [s for s in plan if s.index not in done]
    if todo:
        _update(svc, lease, [rows[s.index].id for s in todo], attempts=VideoSegment.attempts + 1)
        with SegmentPool(min(svc.settings.worker_concurrency, len(todo)), len(plan)) as pool:
            futures = {pool.submit(path, s, parts[s.index], config, limits): s for s in todo}
            while futures:
                finished, _ = wait(futures, timeout=0.5)
                for future in finished:
                    segment = futures.pop(future)
                    report = future.result()  # a failed segment fails the file (the others stop)
                    blob = f"{task.job_id}/{task.index}.segment{segment.index}.{run_tag}.mp4"
                    svc.store.write(OUTPUT_CONTAINER, blob, parts[segment.index])
                    try:
                        _update(svc, lease, [rows[segment.index].id], status="completed", blob=blob,
                                detections=report.detection_count, finished_at=utcnow())
                    except BaseException:
                        svc.store.delete(OUTPUT_CONTAINER, blob)
                        raise
                    done.add(segment.index)
                    detections[segment.index] = report.detection_count
                    log.info("job %s: file %s segment %d of %d done", task.job_id, task.index, segment.index + 1,
                             len(plan))
                value = sum(s.analysed * (1.0 if s.index in done else pool.progress(s.index)) for s in plan) / total
                if value > told:
                    told = value
                    progress(min(value, 0.99))
    rows = _ensure_rows(svc, lease, task.id, plan)
    for index, path_ in parts.items():
        if not path_.exists():  # finished by an earlier run
            with svc.store.open_read(OUTPUT_CONTAINER, rows[index].blob) as src, path_.open("wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
    report = stitch(path, [parts[s.index] for s in plan], dst, config, limits)
    report.figures["detections"] = sum(detections.values())
    shutil.rmtree(folder, ignore_errors=True)
    return report


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
    from .tasks import _LeaseLost

    windows = [s.to_json() for s in plan]
    stale: list[str] = []
    with svc.db.begin() as session:
        if session.scalar(select(Job.id).where(holds(lease.job_id, lease.owner)).with_for_update()) is None:
            raise _LeaseLost()
        rows = list(session.scalars(select(VideoSegment).where(VideoSegment.task_id == task_id)
                                    .order_by(VideoSegment.index)))
        if [r.window for r in rows] != windows:
            stale = [r.blob for r in rows if r.blob]
            for row in rows:
                session.delete(row)
            session.flush()
            rows = [VideoSegment(task_id=task_id, index=s.index, window=w, status="pending", attempts=0)
                    for s, w in zip(plan, windows)]
            session.add_all(rows)
            session.flush()
        session.expunge_all()
    for blob in stale:
        svc.store.delete(OUTPUT_CONTAINER, blob)
    return {row.index: row for row in rows}


def _update(svc: JobService, lease, ids: list[int], **values) -> None:
    """Update segment rows, only while this worker holds the job's lease."""
    from .tasks import _LeaseLost

    with svc.db.begin() as session:
        held = session.scalar(select(Job.id).where(holds(lease.job_id, lease.owner)).with_for_update())
        if held is not None:
            session.execute(update(VideoSegment).where(VideoSegment.id.in_(ids)).values(**values))
    if held is None:
        lease.lost.set()
        raise _LeaseLost()
