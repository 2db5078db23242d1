"""The job as its client sees it: the seed's JobReport (with Veil's extra fields), the `job_status` number and
the state in a sentence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..db.models import Job
from ..storage.base import BlobStore
from .names import OUTPUT_CONTAINER


def job_status_number(job: Job) -> int:
    if job.status == "completed":
        return 100
    if job.status in ("failed", "cancelled"):
        return 200
    if job.status == "running" or (job.status == "queued" and job.progress > 0):  # queued again: progress kept
        return max(1, min(99, int(job.progress * 100)))
    return 0


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=UTC)
    return value


def job_report(job: Job, store: BlobStore, expires: timedelta) -> dict[str, Any]:
    """The seed's JobReport (plus Veil's extra fields), download links signed for `expires`."""
    tasks = []
    for task in job.tasks:
        link = None
        if task.status == "completed" and task.output_blob and not job.files_deleted:
            link = store.signed_download_url(OUTPUT_CONTAINER, task.output_blob, expires, filename=task.output_file)
        detections = None
        if task.detections_blob and not job.files_deleted:
            detections = store.signed_download_url(
                OUTPUT_CONTAINER, task.detections_blob, expires, filename=f"{task.output_file}.detections.gz"
            )
        tasks.append(
            {
                "task_id": task.index,
                "input_file": task.input_name,
                "output_file": task.output_file,
                "download_link": link,
                "status": task.status,
                "error": task.error,
                "detections": task.detections,
                "detections_link": detections,
                "report": task.summary,
            }
        )
    return {
        "job_id": job.id,
        "job_status": job_status_number(job),
        "job_status_description": describe(job),
        "job_total_credit_cost": job.total_cost,
        "total_credit_cost": job.total_cost,
        "state": job.status,
        "file_name": job.file_name,
        "file_size": job.uploaded_size if job.uploaded_size is not None else job.file_size,
        "model": job.model,
        "model_config": job.model_config_json,
        "credits_charged": job.charged_credits,
        "credits_refunded": job.refunded_credits,
        "files_deleted": job.files_deleted,
        "created_at": _aware(job.created_at),
        "uploaded_at": _aware(job.uploaded_at),
        "approved_at": _aware(job.approved_at),
        "started_at": _aware(job.started_at),
        "finished_at": _aware(job.finished_at),
        "updated_at": _aware(job.updated_at),
        "tasks": tasks,
    }


def describe(job: Job) -> str:
    """The job's state in a sentence (job_status_description)."""
    if job.status == "created":
        return "waiting for the upload"
    if job.status == "uploaded":
        return "upload received; computing the cost"
    if job.status == "awaiting_approval":
        return f"uploaded; awaiting approval (cost {job.total_cost} credits)"
    if job.status == "awaiting_review":
        return f"detected; awaiting review: POST /v1/render_job/{job.id} writes the outputs"
    if job.status == "queued":
        return "waiting in queue"
    if job.status == "running":
        done = sum(t.status in ("completed", "failed") for t in job.tasks)
        return f"processing: {done} of {len(job.tasks) or 1} files done"
    return job.description or job.status
