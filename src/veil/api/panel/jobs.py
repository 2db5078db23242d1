"""Jobs: the filtered, paged table with live progress, and one job's page (tasks, previews, actions)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ...db.models import FINAL, STATES, AdminUser, Job
from ...jobs import admins, credits, keys, previews, reports
from ...jobs.job_report import job_status_number
from ...jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, JobConflict, JobNotFound
from . import security
from .params import JOBS_PAGE_SIZE as PAGE_SIZE
from .params import JobsQuery
from .render import render

router = APIRouter()


def _progress(job: Job) -> dict:
    number = job_status_number(job)
    percent = 100 if job.status == "completed" else number if job.status == "running" else 0
    return {"state": job.status, "percent": percent, "final": job.status in FINAL}


@router.get("/jobs")
def jobs_page(request: Request, q: Annotated[JobsQuery, Query()], admin: AdminUser = Depends(security.current_admin)):
    db = request.app.state.service.db
    queue = q.queue == "review"
    if queue:
        jobs, total = admins.review_queue(db, PAGE_SIZE, (q.page - 1) * PAGE_SIZE)
    else:
        where = reports.JobFilter(
            key_id=q.key or None,
            status=q.status if q.status in STATES else None,
            kind=q.kind if q.kind in reports.KINDS else None,
            since=q.since,
            until=q.until,
        )
        jobs, total = reports.find_jobs(db, where, PAGE_SIZE, (q.page - 1) * PAGE_SIZE)
    key_names = {k.id: k.name for k in keys.list_keys(db)}
    query = {
        "queue": "review" if queue else "",
        "key": q.key,
        "status": q.status,
        "kind": q.kind,
        "since": q.since.isoformat() if q.since else "",
        "until": q.until.isoformat() if q.until else "",
    }
    return render(
        request,
        "jobs.html",
        active="review" if queue else "jobs",
        queue=queue,
        claims=admins.claims(db, [j.id for j in jobs]),
        jobs=jobs,
        total=total,
        page=q.page,
        pages=max(1, -(-total // PAGE_SIZE)),
        key_names=key_names,
        query=query,
        filters=urlencode({k: v for k, v in query.items() if v}),
        states=STATES,
        kinds=reports.KINDS,
        kind_of=reports.kind_of,
        progress=_progress,
    )


@router.get("/jobs/progress")
def jobs_progress(
    request: Request, id: list[str] = Query([], max_length=100), admin: AdminUser = Depends(security.current_admin)
) -> JSONResponse:
    """{job id: {state, percent, final}} for the table's live progress."""
    svc = request.app.state.service
    found = {}
    for job_id in id[:100]:
        try:
            found[job_id] = _progress(svc.get_job(job_id))
        except JobNotFound:
            pass
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


def _job_page(request: Request, job_id: str, status_code: int = 200, error: str = ""):
    svc = request.app.state.service
    try:
        job = svc.get_job(job_id)
    except JobNotFound:
        return render(
            request,
            "message.html",
            status_code=404,
            title="No such job",
            message="There is no job with this id.",
            active="jobs",
        )
    report = svc.report(job)
    key = keys.get_key(svc.db, job.key_id)
    return render(
        request,
        "job.html",
        status_code=status_code,
        active="jobs",
        job=job,
        report=report,
        key=key,
        kind=reports.kind_of(job.file_name),
        progress=_progress(job),
        error=error,
        ledger=credits.ledger(svc.db, job_id=job.id),
        final=job.status in FINAL,
        done=request.query_params.get("done"),
        review_log=admins.review_log(svc.db, job.id),
        reviewable=not job.files_deleted and any(t.detections_blob and t.media for t in job.tasks),
    )


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, admin: AdminUser = Depends(security.current_admin)):
    return _job_page(request, job_id)


def _act(request: Request, job_id: str, action: str):
    svc = request.app.state.service
    try:
        job = svc.get_job(job_id)
        (svc.cancel if action == "cancel" else svc.delete_files)(job.key_id, job_id)
    except JobNotFound:
        return _job_page(request, job_id)
    except JobConflict as exc:
        return _job_page(request, job_id, 409, error=f"Not possible: {exc}.")
    return RedirectResponse(f"/admin/jobs/{job_id}?done={action}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str, form: dict = Depends(security.admin_form)):
    return _act(request, job_id, "cancel")


@router.post("/jobs/{job_id}/delete-files")
def delete_files(request: Request, job_id: str, form: dict = Depends(security.admin_form)):
    return _act(request, job_id, "delete-files")


@router.get("/jobs/{job_id}/preview/{which}/{index}.jpg")
def preview(
    request: Request, job_id: str, which: str, index: int, admin: AdminUser = Depends(security.current_admin)
) -> Response:
    """A JPEG of the job's input (image/video jobs) or of one task's output; 404 when there is none."""
    svc = request.app.state.service
    try:
        job = svc.get_job(job_id)
    except JobNotFound:
        return Response(status_code=404)
    kind = reports.kind_of(job.file_name)
    task = next((t for t in job.tasks if t.index == index), None)
    if job.files_deleted or task is None:
        return Response(status_code=404)
    if which == "input" and kind != "archive":
        where = (INPUT_CONTAINER, job.input_blob, kind)
    elif which == "output" and task.status == "completed" and task.output_blob:
        where = (OUTPUT_CONTAINER, task.output_blob, task.media or reports.kind_of(task.output_file))
    else:
        return Response(status_code=404)
    try:
        data = previews.preview(svc.store, *where)
    except (ValueError, FileNotFoundError):  # BlobNotFoundError is a FileNotFoundError
        return Response(status_code=404)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})
