"""The seed's public API under /v1, plus list/cancel/delete extensions. Keys arrive in the `access_token` header."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError

from ..db.models import ApiKey
from ..jobs import keys
from ..jobs.credits import InsufficientCredits
from ..jobs.service import JobConflict, JobNotFound, JobService, UploadSession, UploadTooLarge
from . import schemas
from .blob import BodyTooSlow, UploadLimits, timed_body

_key_header = APIKeyHeader(name="access_token", auto_error=False,
                           description="Your API key (a 36-character UUID).")


def service(request: Request) -> JobService:
    return request.app.state.service


def api_key(request: Request, token: str | None = Depends(_key_header)) -> ApiKey:
    row = keys.authenticate(service(request).db, token)
    if row is None:
        raise HTTPException(401, "missing, invalid or revoked API key (send it in the `access_token` header)")
    return row


router = APIRouter(prefix="/v1", tags=["public"], responses={401: {"model": schemas.Error}})
_NOT_FOUND = {404: {"model": schemas.Error, "description": "No such job for this key."}}


def _create(svc: JobService, key: ApiKey, body: schemas.CreateUploadSessionRequest) -> UploadSession:
    try:
        return svc.create_job(key.id, body.file_name, body.file_size, body.content_type, body.model,
                              body.config.model_dump())
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None


@router.post("/create_upload_session", response_model=schemas.CreateUploadSessionResponse,
             responses={413: {"model": schemas.Error}})
def create_upload_session(body: schemas.CreateUploadSessionRequest, key: ApiKey = Depends(api_key),
                          svc: JobService = Depends(service)):
    """Create a job and a signed upload URL (`session_uri`) for the seed's block upload."""
    upload = _create(svc, key, body)
    return {"session_uri": upload.session_uri, "job_id": upload.job.id}


@router.post("/start_upload", response_model=schemas.StartUploadResponse, responses={413: {"model": schemas.Error}})
def start_upload(body: schemas.CreateUploadSessionRequest, key: ApiKey = Depends(api_key),
                 svc: JobService = Depends(service)):
    """Create a job and return the SAS token and URL parts for an Azure SDK upload; the SAS expires after 7 days:
    `BlobClient(account_url, container, blob, credential=sas_token).upload_blob(...)`."""
    upload = _create(svc, key, body)
    expires = datetime.now(timezone.utc) + timedelta(seconds=svc.settings.upload_sas_seconds)
    return {"session_uri": upload.session_uri, "job_id": upload.job.id, **upload.sas_parts, "expires_at": expires}


@router.put("/direct_upload", status_code=307, response_model=schemas.DirectUploadResponse,
            responses={307: {"description": "Re-send the same PUT to `Location` (a Put Blob with a write SAS). "
                             "The job id is in the `x-veil-job-id` header and the body."},
                       400: {"model": schemas.Error}, 411: {"model": schemas.Error},
                       413: {"model": schemas.Error}})
async def direct_upload(request: Request, key: ApiKey = Depends(api_key), svc: JobService = Depends(service),
                        file_name: str = Query("upload", max_length=1000, description="Name of the uploaded file."),
                        model: str = Query("blur"),
                        model_config: str | None = Query(None, description="model_config as JSON text.")):
    """Create a job and redirect (307) the upload to the blob store; requires `x-ms-blob-type: BlockBlob`."""
    if request.headers.get("x-ms-blob-type") != "BlockBlob":
        raise HTTPException(400, "the x-ms-blob-type header must be BlockBlob")
    length = request.headers.get("content-length")
    if length is None or not (length.isascii() and length.isdigit()):
        raise HTTPException(411, "Content-Length is required (send the file as bytes or a file object)")
    try:
        config = json.loads(model_config) if model_config else {}
        body = schemas.CreateUploadSessionRequest(file_name=file_name, file_size=int(length), model=model,
                                                  model_config=config)
    except (ValueError, ValidationError) as exc:
        detail = (schemas.validation_detail(exc.errors()) if isinstance(exc, ValidationError)
                  else f"model_config: {exc}")
        raise HTTPException(422, detail) from None
    upload = _create(svc, key, body)
    try:  # the client sends the body before it reads our answer; let it finish, within the upload deadline
        async for _ in timed_body(request, int(length), UploadLimits.from_settings(svc.settings)):
            pass
    except BodyTooSlow:
        raise HTTPException(408, "the request body arrived too slowly", headers={"Connection": "close"}) from None
    return JSONResponse({"job_id": upload.job.id, "session_uri": upload.session_uri}, status_code=307,
                        headers={"Location": upload.session_uri, "x-veil-job-id": upload.job.id})


@router.post("/approve_job/{job_id}", response_model=schemas.ApproveResponse,
             responses={202: {"model": schemas.ApproveResponse, "description": "Already approved (or finished)."},
                        302: {"model": schemas.ApproveResponse,
                              "description": "The upload is not complete yet; retry later (no Location header)."},
                        402: {"model": schemas.Error, "description": "The key's balance does not cover the cost."},
                        **_NOT_FOUND})
def approve_job(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Reserve the job's `job_total_credit_cost` from the key's balance and queue it."""
    try:
        outcome = svc.approve(key.id, job_id)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InsufficientCredits as exc:
        raise HTTPException(402, str(exc)) from None
    job = svc.get_job(job_id, key.id)
    status, detail = {
        "approved": (200, "job approved"),
        "already": (202, f"job already approved ({job.status})"),
        "waiting": (302, "waiting for the upload to complete; retry in a few seconds"),
    }[outcome]
    # A 302 must carry no Location, or `requests` would follow it as a GET (notes §4).
    return JSONResponse({"job_id": job.id, "detail": detail, "job_total_credit_cost": job.total_cost},
                        status_code=status)


@router.get("/job_result/{job_id}", response_model=schemas.JobReport, responses=_NOT_FOUND)
def job_result(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """The JobReport: status, cost, and one task per output file with its download link."""
    try:
        return svc.report(svc.get_job(job_id, key.id))
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None


router.add_api_route("/get_job_result/{job_id}", job_result, methods=["GET"], response_model=schemas.JobReport,
                     responses=_NOT_FOUND, summary="Job Result (alias of /job_result)")


@router.post("/notify_on_job_status", response_model=schemas.NotifyResponse, responses=_NOT_FOUND)
def notify_on_job_status(body: schemas.NotifyRequest, key: ApiKey = Depends(api_key),
                         svc: JobService = Depends(service)):
    """Register a callback URL. Veil POSTs the JobReport there when an upload is complete and awaits approval,
    and when the job completes or fails; bodies are HMAC-SHA256 signed with this key's `signing_secret`
    (headers `X-Veil-Timestamp`, `X-Veil-Signature: sha256=<hex HMAC of "<timestamp>." + body>`),
    deliveries retried with backoff. The URL must reach a public address (422 for loopback, private, link-local
    and other internal addresses unless the operator allows them); a key may have a limited number of active
    registrations (422 beyond); registering the same URL again changes nothing."""
    try:
        svc.notifier.register_callback(key.id, body.callback_url, body.job_id)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:  # InvalidCallbackURL
        raise HTTPException(422, str(exc)) from None
    return {"callback_url": body.callback_url, "job_id": body.job_id, "detail": "callback registered",
            "signing_secret": svc.notifier.callback_secret(key.id)}


@router.get("/jobs", response_model=schemas.JobList)
def list_jobs(key: ApiKey = Depends(api_key), svc: JobService = Depends(service),
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=schemas.BIGINT_MAX)):
    """This key's jobs, newest first."""
    jobs, total = svc.list_jobs(key.id, limit, offset)
    return {"jobs": [svc.report(job) for job in jobs], "total": total, "limit": limit, "offset": offset}


@router.post("/jobs/{job_id}/cancel", response_model=schemas.JobReport,
             responses={**_NOT_FOUND, 409: {"model": schemas.Error}})
def cancel_job(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Cancel a job: at once (and refunded) before processing started, else before its next file, refunding what
    the files not processed cost (everything if no file was completed)."""
    return _report_after(svc, lambda: svc.cancel(key.id, job_id))


@router.delete("/jobs/{job_id}/files", response_model=schemas.JobReport,
               responses={**_NOT_FOUND, 409: {"model": schemas.Error}})
def delete_job_files(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Delete a finished job's input and output files from the store (download links stop working)."""
    return _report_after(svc, lambda: svc.delete_files(key.id, job_id))


def _report_after(svc: JobService, action) -> dict:
    try:
        return svc.report(action())
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None

