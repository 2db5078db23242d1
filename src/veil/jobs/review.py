"""Render requests: a finished job's files drawn again from their detections documents (`veil.engine.render`),
with `model_config` overrides and a reviewer's edits, on a worker under a lease like any job.

A render of a job that awaits review (`model_config.review: true`) is included in its approved price; a render
of a completed job costs `VEIL_RENDER_PRICE_FRACTION` of its price (at least 1 credit), reserved with the same
conditional update as an approval (the job leaves `completed` once, the balance never goes below zero) and
refunded if the render fails through no fault of the input. The previous outputs stay downloadable until
each file's new output is stored.
"""

from __future__ import annotations

import gzip
import math
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from sqlalchemy import update

from ..db.models import Job, Task, utcnow
from ..db.session import changed
from ..engine.config import ModelConfig
from ..engine.document import (
    EDITS,
    AddBox,
    Header,
    KeepCandidates,
    RemoveCandidates,
    RemoveTrack,
    parse_header,
    read_arrays,
)
from ..engine.render import render_config
from . import credits
from .service import INPUT_CONTAINER, OUTPUT_CONTAINER, JobConflict, JobService

_FIXED = ("slicing", "face_track", "lp_track", "review")  # decide what was detected: a render cannot change them


class InvalidRender(ValueError):
    """A render request a client got wrong; `loc` names the field."""

    def __init__(self, loc: list, msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def render_cost(svc: JobService, job: Job) -> int:
    return max(1, math.ceil((job.total_cost or 0) * svc.settings.render_price_fraction))


def request_render(svc: JobService, key_id: str, job_id: str, overrides: dict, edits: dict[str, list]) -> Job:
    """Queue a render of the job's files. Raises JobNotFound, JobConflict (not completed nor awaiting review,
    files deleted, a render already queued), InvalidRender (422), credits.InsufficientCredits (402)."""
    job = svc.get_job(job_id, key_id)
    if job.files_deleted:
        raise JobConflict("the job's files were deleted; nothing is left to render")
    if job.status not in ("completed", "awaiting_review"):
        raise JobConflict(f"job is {job.status}; a render needs a completed job or one awaiting review")
    config = _checked_config(job, overrides)
    tasks = {str(t.index): t for t in job.tasks if t.detections_blob}
    if not tasks:
        raise JobConflict(
            "the job kept no detections document (a video run in segments, or a job from before documents were kept)"
        )
    for task in tasks.values():
        assert task.detections_blob is not None  # `tasks` holds only the files with a document
        try:
            render_config(_header(svc, task.detections_blob), overrides)
        except ValueError as exc:  # a threshold below what the document kept, a kind it does not hold
            raise InvalidRender(["model_config"], f"{task.input_name}: {exc}") from None
    checked = {index: _checked_edits(svc, tasks, index, value, config) for index, value in edits.items()}
    included = job.status == "awaiting_review"
    cost = 0 if included else render_cost(svc, job)
    request = {"config": overrides, "edits": checked, "cost": cost}
    with svc.db.begin() as session:
        moved = changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == job.status, Job.render_request.is_(None))
            .values(
                status="queued",
                render_request=request,
                progress=0.0,
                renders=Job.renders + int(not included),
                reserved_credits=Job.reserved_credits + cost,
                finished_at=None,
                dispatched_at=None,
                description="render queued",
            ),
        )
        if moved != 1:
            raise JobConflict("a render of this job was just queued")
        if cost:
            credits.reserve(session, key_id, job_id, cost)  # raises → the whole transaction rolls back
        session.execute(
            update(Task).where(Task.job_id == job_id, Task.detections_blob.is_not(None)).values(render_pending=True)
        )
    svc.send(job_id)
    return svc.get_job(job_id, key_id)


def expire_unreviewed(svc: JobService) -> int:
    """Jobs awaiting review longer than `approval_timeout_seconds` fail, refunded, their files deleted."""
    from sqlalchemy import select

    cutoff = utcnow() - timedelta(seconds=svc.settings.approval_timeout_seconds)
    with svc.db() as session:
        ids = list(session.scalars(select(Job.id).where(Job.status == "awaiting_review", Job.updated_at < cutoff)))
    for job_id in ids:
        with svc.db.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "awaiting_review":
                continue
            job.status, job.finished_at = "failed", utcnow()
            job.description = "not reviewed in time; nothing was written and the credits were refunded"
            svc._refund(session, job, "job expired awaiting review")
        job = svc.get_job(job_id)
        svc.store.delete(INPUT_CONTAINER, job.input_blob)
        for task in job.tasks:
            for blob in task.stored():
                svc.store.delete(OUTPUT_CONTAINER, blob)
        with svc.db.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(files_deleted=True))
        svc.notifier.notify(job_id)
    return len(ids)


def _header(svc: JobService, blob: str) -> Header:
    """A stored document's header (its first line: the rest is not read)."""
    with svc.store.open_read(OUTPUT_CONTAINER, blob) as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return parse_header(f.readline(), blob)


def _checked_config(job: Job, overrides: dict) -> ModelConfig:
    for key in _FIXED:
        if key in overrides and overrides[key] != job.model_config_json.get(key, ModelConfig().model_dump()[key]):
            raise InvalidRender(["model_config", key], f"{key} decides what was detected; a render cannot change it")
    for key in ("blur_face", "enable_lp"):
        if overrides.get(key) and not job.model_config_json.get(key, True):
            raise InvalidRender(
                ["model_config", key], f"{key}: the job detected none of these; a render cannot turn it on"
            )
    try:
        return ModelConfig(**{**job.model_config_json, **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidRender(["model_config", *error.get("loc", ())], error.get("msg", "invalid")) from None


def _checked_edits(svc: JobService, tasks: dict[str, Task], index: str, value: list, config: ModelConfig) -> list:
    """The edits of one task, validated against its document: boxes inside the picture, frames in range,
    candidate ids that exist, thresholds the document can serve."""
    loc = ["edits", index]
    if index not in tasks:
        raise InvalidRender(loc, f"no task {index} with a detections document")
    try:
        edits = EDITS.validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidRender([*loc, *error.get("loc", ())], error.get("msg", "invalid")) from None
    with tempfile.TemporaryDirectory(prefix="veil-review-") as tmp:
        doc = Path(tmp) / "doc.gz"
        with svc.store.open_read(OUTPUT_CONTAINER, tasks[index].detections_blob) as src, doc.open("wb") as dst:
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
        read = read_arrays(doc)
    tracks = set(np.unique(read.tracks).tolist()) if read.header.version >= 2 else None  # version 1: unknown
    for n, edit in enumerate(edits):
        _check_edit(edit, [*loc, n], read.header, read.counts, tracks)
    return [edit.model_dump() for edit in edits]


def _exists(candidate: str, counts) -> bool:
    """Whether "i.n" names a candidate: frame i has more than n."""
    frame, _, n = candidate.partition(".")
    if not (frame.isdigit() and n.isdigit()) or candidate != f"{int(frame)}.{int(n)}":
        return False
    return int(frame) < len(counts) and int(n) < counts[int(frame)]


def _check_edit(edit, loc: list, header: Header, counts, tracks: set[int] | None) -> None:
    frames = len(counts)
    if isinstance(edit, AddBox):
        for frame, box in edit.frames.items():
            if frame >= frames:
                raise InvalidRender([*loc, "frames", frame], f"frame {frame}: the file has {frames} frames")
            x1, y1, x2, y2 = box
            if not (0 <= x1 < x2 <= header.width and 0 <= y1 < y2 <= header.height):
                raise InvalidRender(
                    [*loc, "frames", frame], f"the box must lie inside the {header.width}x{header.height} picture"
                )
    elif isinstance(edit, (RemoveCandidates, KeepCandidates)):
        unknown = sorted(c for c in set(edit.ids) if not _exists(c, counts))
        if unknown:
            raise InvalidRender([*loc, "ids"], f"no such candidate: {', '.join(unknown[:5])}")
    elif isinstance(edit, RemoveTrack) and tracks is not None and edit.track not in tracks:
        raise InvalidRender([*loc, "track"], f"no track {edit.track} in the document")
