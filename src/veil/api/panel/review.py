"""Review pages: a job's files with every candidate the detectors found, fixed by a reviewer and rendered
again through `veil.jobs.review.request_render` (the public API's `render_job`, acting for the job's key).

Pages: /admin/jobs/{id}/review (its first file) and /review/{task} (one file: a photo, or a video's frame
view and timeline). Their data: the document's candidates and timeline as JSON, the input at review
resolution (a photo, or a video's frames decoded on demand), the output for before/after. Posts (JSON, CSRF
token in a header): render, and the soft claim (renewed while the page is open, released when it closes)."""

from __future__ import annotations

import io

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError

from ...db.models import AdminUser, Job, Task
from ...jobs import admins, credits, keys, reports
from ...jobs.archive import ArchiveError
from ...jobs.review import InvalidRender, render_cost, request_render
from ...jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, JobConflict, JobNotFound
from ..schemas import RenderRequest
from . import security
from .frames import REVIEW_SIDE, FrameServer
from .render import render
from .review_data import NEAR, Bounded, DocIndex, LocalFiles

router = APIRouter()
PHOTO_SIDE = 2048  # a photo's long side on the review page (zoom shows it sharper than the screen)
_files, _indexes, _frames = LocalFiles(), Bounded(8), FrameServer()
_NO_STORE = {"Cache-Control": "no-store"}


class _Missing(Exception):
    """No such job or file to review (404)."""


def _reviewable(request: Request, job_id: str, index: int | None = None) -> tuple[Job, Task]:
    svc = request.app.state.service
    try:
        job = svc.get_job(job_id)
    except JobNotFound:
        raise _Missing() from None
    tasks = [t for t in job.tasks if t.detections_blob and (t.media in ("image", "video"))]
    task = next((t for t in tasks if index is None or t.index == index), None)
    if job.files_deleted or task is None:
        raise _Missing()
    return job, task


def _index(request: Request, task: Task) -> DocIndex:
    svc = request.app.state.service
    return _indexes.get_or_make(
        task.detections_blob, lambda: DocIndex.load(_files.path(svc.store, OUTPUT_CONTAINER, task.detections_blob))
    )


def _not_found(request: Request):
    return render(
        request,
        "message.html",
        status_code=404,
        title="Nothing to review",
        message="This job has no file with a detections document to review (its files were deleted, "
        "its video ran in segments, or it ran before documents were kept).",
        active="review",
    )


@router.get("/jobs/{job_id}/review")
def first_file(request: Request, job_id: str, admin: AdminUser = Depends(security.current_admin)):
    try:
        job, task = _reviewable(request, job_id)
    except _Missing:
        return _not_found(request)
    return RedirectResponse(f"/admin/jobs/{job.id}/review/{task.index}", status_code=303)


@router.get("/jobs/{job_id}/review/{index}")
def review_page(request: Request, job_id: str, index: int, admin: AdminUser = Depends(security.current_admin)):
    try:
        job, task = _reviewable(request, job_id, index)
    except _Missing:
        return _not_found(request)
    svc = request.app.state.service
    doc = _index(request, task)
    can_edit = admin.role in security.REVIEWERS and job.status in ("awaiting_review", "completed")
    holder = admins.claim(svc.db, job.id, admin.email) if can_edit else admins.claims(svc.db, [job.id]).get(job.id)
    files = [t.index for t in job.tasks if t.detections_blob and t.media in ("image", "video")]
    position = files.index(task.index)
    config = job.model_config_json
    floor = {"face": doc.header.floor["faces"], "plate": doc.header.floor["plates"]}
    if doc.header.media == "video":
        floor = {k: round(v + NEAR, 4) for k, v in floor.items()}  # the tracker's low-score stage
    setup = {
        "job": job.id,
        "task": task.index,
        "media": doc.header.media,
        "width": doc.header.width,
        "height": doc.header.height,
        "frames": doc.frames,
        "fps": (doc.header.video or {}).get("fps"),
        "thresholds": {"face": config.get("blur_threshold", 0.5), "plate": config.get("lp_threshold", 0.5)},
        "kinds": {"face": config.get("blur_face", True), "plate": config.get("enable_lp", True)},
        "floor": floor,
        "canEdit": can_edit,
        "me": admin.email,
        "near": NEAR,
        "rendered": task.status == "completed",
        "state": job.status,
    }
    price = 0 if job.status == "awaiting_review" else render_cost(svc, job)
    return render(
        request,
        "review.html",
        active="review",
        job=job,
        task=task,
        setup=setup,
        holder=holder,
        me=admin.email,
        price=price,
        balance=keys.get_key(svc.db, job.key_id).credits,
        can_edit=can_edit,
        prev_file=files[position - 1] if position else None,
        next_file=files[position + 1] if position + 1 < len(files) else None,
        position=position + 1,
        file_count=len(files),
        summary=task.summary or {},
    )


@router.get("/jobs/{job_id}/review/{index}/candidates.json")
def candidates(
    request: Request,
    job_id: str,
    index: int,
    start: int = Query(0, ge=0),
    count: int = Query(1, ge=1, le=2000),
    admin: AdminUser = Depends(security.current_admin),
):
    """{"frames": {index: [[id, kind, x1, y1, x2, y2, score, track], ...]}, "edits": [recorded edits]}."""
    try:
        _, task = _reviewable(request, job_id, index)
    except _Missing:
        return JSONResponse({"detail": "Not Found"}, 404)
    doc = _index(request, task)
    found: dict[int, list] = {i: [] for i in range(start, min(doc.frames, start + count))}
    for row in doc.candidates(start, start + count):
        found[int(row[0].split(".")[0])].append(row)
    return JSONResponse({"frames": found, "edits": doc.edits}, headers=_NO_STORE)


@router.get("/jobs/{job_id}/review/{index}/timeline.json")
def timeline(
    request: Request,
    job_id: str,
    index: int,
    face: float = Query(0.5, ge=0, le=1),
    plate: float = Query(0.5, ge=0, le=1),
    admin: AdminUser = Depends(security.current_admin),
):
    """A video's lanes (one per track) and places to look at these thresholds."""
    try:
        _, task = _reviewable(request, job_id, index)
    except _Missing:
        return JSONResponse({"detail": "Not Found"}, 404)
    return JSONResponse(_index(request, task).timeline({0: face, 1: plate}), headers=_NO_STORE)


@router.get("/jobs/{job_id}/review/{index}/{which}.jpg")
def picture(
    request: Request,
    job_id: str,
    index: int,
    which: str,
    frame: int = Query(0, ge=0),
    side: int = Query(REVIEW_SIDE, ge=160, le=REVIEW_SIDE),
    admin: AdminUser = Depends(security.current_admin),
) -> Response:
    """The input ("before") or the output ("after") at review resolution: a photo, or one frame of a video
    (`side`: its long side, smaller while playing)."""
    try:
        job, task = _reviewable(request, job_id, index)
    except _Missing:
        return Response(status_code=404)
    svc = request.app.state.service
    try:
        if which == "before" and reports.kind_of(job.file_name) == "archive":  # the file, from the archive
            path = _files.member(svc.store, INPUT_CONTAINER, job.input_blob, task.input_name)
        elif which == "before":
            path = _files.path(svc.store, INPUT_CONTAINER, job.input_blob)
        elif which == "after" and task.status == "completed" and task.output_blob and not task.render_pending:
            path = _files.path(svc.store, OUTPUT_CONTAINER, task.output_blob)
        else:
            return Response(status_code=404)

        if task.media == "video":
            doc = _index(request, task)
            if frame >= doc.frames:
                return Response(status_code=404)
            stored = None
            if which == "before" and task.review_copy:  # the copy the job made while it detected the video
                parts = task.review_copy
                stored = lambda n: _files.path(svc.store, OUTPUT_CONTAINER, parts[n])  # noqa: E731
            data = _frames.jpeg(path, doc.pts, frame, side, copy=which == "before", stored=stored)
        else:
            data = _photo(path)
    except (OSError, ValueError, IndexError, UnidentifiedImageError, ArchiveError):
        return Response(status_code=404)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


def _photo(path) -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    with Image.open(path) as img:
        image = ImageOps.exif_transpose(img).convert("RGB")  # upright, as the document's boxes are
    image.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


@router.post("/jobs/{job_id}/render")
async def render_job(request: Request, job_id: str, admin: AdminUser = Depends(security.checked_call)):
    """The page's render: `render_job`'s body ({"model_config", "edits"}), each edit signed with the account."""
    svc = request.app.state.service
    try:
        body = RenderRequest.model_validate(await request.json())
    except (ValueError, ValidationError):
        return JSONResponse({"error": "The render request is not valid JSON of render_job's form."}, 422)
    edits = {index: [{**edit, "by": admin.email} for edit in value] for index, value in body.edits.items()}
    try:
        job = svc.get_job(job_id)
        request_render(svc, job.key_id, job_id, body.config, edits)  # acting for the job's key
    except JobNotFound:
        return JSONResponse({"error": "No such job."}, 404)
    except InvalidRender as exc:
        return JSONResponse({"error": f"{' › '.join(map(str, exc.loc))}: {exc.msg}"}, 422)
    except credits.InsufficientCredits as exc:
        return JSONResponse({"error": f"Not enough credits on the job's key: {exc}"}, 402)
    except JobConflict as exc:
        return JSONResponse({"error": f"Not possible now: {exc}."}, 409)
    admins.record(svc.db, job_id, admin.email, "render", _summary(body.config, edits))
    return JSONResponse({"queued": True}, 202)


def _summary(config: dict, edits: dict[str, list]) -> str:
    """ "2 edits (file 0: remove 0.3; add face on frames 5-30); blur_threshold 0.35" for the review log."""
    count = sum(len(v) for v in edits.values())
    parts = []
    for index, value in sorted(edits.items()):
        shown = []
        for e in value:
            if e.get("op") == "add":
                frames = sorted(int(f) for f in e.get("frames", {}))
                shown.append(
                    f"add {e.get('kind')} on frame{'s' if len(frames) > 1 else ''} "
                    f"{frames[0]}{f'-{frames[-1]}' if len(frames) > 1 else ''}"
                    if frames
                    else "add"
                )
            elif e.get("op") == "remove_track":
                shown.append(f"remove track {e.get('track')}")
            else:
                shown.append(f"{e.get('op')} {', '.join(map(str, e.get('ids', [])[:10]))}")
        parts.append(f"file {index}: {'; '.join(shown)}")
    text = f"{count} edit{'' if count == 1 else 's'}" + (f" ({' · '.join(parts)})" if parts else "")
    changed = ", ".join(f"{k} {v}" for k, v in config.items())
    return text + (f"; {changed}" if changed else "")


@router.post("/jobs/{job_id}/claim")
def claim(request: Request, job_id: str, admin: AdminUser = Depends(security.checked_call)):
    """Renew this account's claim (every 30 s while a review page is open); who holds it now."""
    try:
        _reviewable(request, job_id)
    except _Missing:
        return JSONResponse({"detail": "Not Found"}, 404)
    return JSONResponse({"holder": admins.claim(request.app.state.service.db, job_id, admin.email)}, headers=_NO_STORE)


@router.post("/jobs/{job_id}/release")
def release(request: Request, job_id: str, admin: AdminUser = Depends(security.checked_call)):
    admins.release(request.app.state.service.db, job_id, admin.email)
    return JSONResponse({"released": True})
