"""The worker's side of review and re-render (`veil.jobs.review` queues them):

* a job with `model_config.review: true` is detected, not anonymized: each file's detections document is
  stored, and the job waits in `awaiting_review` (job_status 0, which the seed's client keeps polling) for a
  render call; the "awaiting review" callback goes out then;
* a render draws each file again from its document (`veil.engine.render`, no detector) with the request's
  `model_config` overrides and edits, stores the new output under this run's own name and only then swaps it
  in for the old one, so the previous output stays downloadable until the new one is complete.

Both run under the job's lease like any job (`veil.jobs.runner.process_job`): a killed worker's render is
taken up by another worker and redoes only the files not yet drawn.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..db.models import FINAL, Job, utcnow
from ..engine.config import MediaLimits, ModelConfig
from ..engine.document import EDITS, append_edits, iter_frames
from ..engine.file_report import summarize
from ..engine.probe import media_kind
from ..engine.render import detect_document, render
from ..engine.review_copy import ReviewCopyWriter, worth_copying
from . import credits
from .drain import HandBack
from .names import safe_name
from .running import Cancelled, JobLease, LeaseLost, Progress, fail_task, get_task, output_suffix, run_tag, set_task
from .service import OUTPUT_CONTAINER, JobService

log = logging.getLogger(__name__)


def run_review(
    svc: JobService, job: Job, work: Path, config: ModelConfig, tasks: list[tuple[int, Path]], lease: JobLease
) -> None:
    """Detect (review mode) or render (a render request) the job's files, then leave the job awaiting review
    or completed. Raises Cancelled like `_process`."""
    request = job.render_request
    progress = Progress(svc, job.id, len(tasks), lease)
    tag = run_tag(lease.owner)
    for index, (task_id, path) in enumerate(tasks):
        task = get_task(svc, task_id)
        if task.status == "failed" or (task.detections_blob if request is None else not task.render_pending):
            continue  # failed, or detected already (a resumed review), or drawn already (a resumed render)
        progress.check_cancel(force=True)
        if lease.drain.requested:
            raise HandBack()
        dst = work / "out" / safe_name(path.name)
        doc = work / "out" / f"{task.index}.detections.gz"
        stored: list[str] = []
        copy = work / "out" / f"{task.index}.review"
        try:
            if request is None:
                values = _detect_file(svc, job, task, path, doc, copy, config, tag, progress.for_file(index), stored)
            else:
                values = _render_file(svc, task, path, dst, doc, config, request, tag, progress.for_file(index), stored)
            lease.check()
            set_task(svc, lease, task_id, **values)
        except (Cancelled, LeaseLost, HandBack):
            for blob in stored:
                svc.store.delete(OUTPUT_CONTAINER, blob)
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file fails only its own task
            for blob in stored:
                svc.store.delete(OUTPUT_CONTAINER, blob)
            fail_task(svc, lease, task_id, path, dst, exc)
        else:
            for old in (task.output_blob, task.detections_blob) if request else ():
                if old and old not in values.values():
                    svc.store.delete(OUTPUT_CONTAINER, old)
        finally:
            dst.unlink(missing_ok=True)
            doc.unlink(missing_ok=True)
            shutil.rmtree(copy, ignore_errors=True)
        progress.file_done(index)
    _close(svc, job, lease.owner, request)


def _detect_file(
    svc: JobService, job: Job, task, path: Path, doc: Path, copy: Path, config: ModelConfig, tag: str, progress, stored
) -> dict:
    """Detect one file into its stored document (and a video's review copy, where its keyframes lie far
    apart: the review page's frames come from it); returns the task's new values."""
    writer = ReviewCopyWriter(copy) if media_kind(path) == "video" and worth_copying(path) else None
    limits = MediaLimits.from_settings(svc.settings)
    try:
        report = detect_document(path, doc, config, progress, limits, svc.settings.detections_floor, writer)
        parts = writer.finish() if writer is not None else []
    finally:
        if writer is not None:
            writer.abort()  # nothing left open when detection failed; a no-op after finish()
    blob = f"{job.id}/{task.index}.{tag}.detections.gz"
    svc.store.write(OUTPUT_CONTAINER, blob, doc)
    stored.append(blob)
    review_copy = []
    for part in parts:
        review_copy.append(f"{job.id}/{task.index}.{tag}.review/{part.name}")
        svc.store.write(OUTPUT_CONTAINER, review_copy[-1], part)
        stored.append(review_copy[-1])
    return {
        "detections_blob": blob,
        "review_copy": review_copy or None,
        "render_pending": True,
        "media": report.media,
        "summary": summarize(report, iter_frames(doc), config),
    }


def _render_file(
    svc: JobService,
    task,
    path: Path,
    dst: Path,
    doc: Path,
    config: ModelConfig,
    request: dict,
    tag: str,
    progress,
    stored: list[str],
) -> dict:
    """Render one file from its stored document with the request's edits (recorded in a new copy of the
    document); returns the task's new values."""
    with svc.store.open_read(OUTPUT_CONTAINER, task.detections_blob) as src, doc.open("wb") as out:
        while chunk := src.read(1024 * 1024):
            out.write(chunk)
    edits = EDITS.validate_python(request.get("edits", {}).get(str(task.index), []))
    overrides = request.get("config", {})
    report = render(path, doc, dst, overrides, edits, progress, MediaLimits.from_settings(svc.settings))
    if edits:
        append_edits(doc, edits)
    blob = f"{task.job_id}/{task.index}.{tag}.render{output_suffix(path.name)}"  # this run's own names
    svc.store.write(OUTPUT_CONTAINER, blob, dst)
    stored.append(blob)
    doc_blob = task.detections_blob
    if edits:
        doc_blob = f"{task.job_id}/{task.index}.{tag}.render.detections.gz"
        svc.store.write(OUTPUT_CONTAINER, doc_blob, doc)
        stored.append(doc_blob)
    rendered = ModelConfig(**{**config.model_dump(), **overrides})
    return {
        "status": "completed",
        "output_blob": blob,
        "detections_blob": doc_blob,
        "render_pending": False,
        "detections": report.detection_count,
        "media": report.media,
        "finished_at": utcnow(),
        "summary": summarize(report, iter_frames(doc), rendered, edits=len(edits)),
        "error": None,
    }


def _close(svc: JobService, job: Job, owner: str, request: dict | None) -> None:
    """Review mode: the job awaits review. A render: completed when a file was drawn; else failed, and the
    render's cost refunded when it failed through Veil's fault (the input is the same as before)."""
    tasks = svc.get_job(job.id).tasks
    if request is None:
        status, description, refund = "awaiting_review", "detected; awaiting review", 0
    else:
        drawn = [t for t in tasks if t.status == "completed" and not t.render_pending]
        failed = [t for t in tasks if t.status == "failed"]
        status = "completed" if drawn else "failed"
        description = f"rendered: {len(drawn)} of {len(tasks)} files"
        if failed:
            description += "; failed: " + "; ".join(f"{t.input_name}: {t.error}" for t in failed)
        refund = 0
        if not drawn and any(t.system_fault for t in failed):  # a paid render: its cost; the first: everything
            refund = request.get("cost") or job.reserved_credits - job.refunded_credits
    with svc.db.begin() as session:
        row = session.get(Job, job.id, with_for_update=True)
        if row is None or row.status != "running" or row.lease_owner != owner:
            log.warning("job %s: lease lost; this worker's result is dropped", job.id)
            return
        row.status, row.description = status, description
        row.lease_owner = row.lease_expires_at = None
        row.render_request = None
        if status in FINAL:
            row.finished_at, row.progress = utcnow(), 1.0 if status == "completed" else row.progress
        if refund:
            credits.refund(session, row.key_id, row.id, refund, "render failed through no fault of its input")
            row.refunded_credits += refund
    log.info("job %s: %s (%s)", job.id, status, description)
    svc.notifier.notify(job.id)
