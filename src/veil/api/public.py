"""The seed's public API under /v1, plus list/cancel/delete extensions. Keys arrive in the `access_token` header."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter, ValidationError

from ..db.models import ApiKey
from ..engine.config import ModelConfig
from ..jobs import keys
from ..jobs.credits import InsufficientCredits
from ..jobs.review import InvalidRender, request_render
from ..jobs.service import JobConflict, JobNotFound, JobService, UploadSession, UploadTooLarge
from ..logs import name_key
from . import schemas
from .blob import BodyTooSlow, UploadLimits, timed_body

_key_header = APIKeyHeader(name="access_token", auto_error=False, description="Your API key (a 36-character UUID).")


def service(request: Request) -> JobService:
    return request.app.state.service


def api_key(request: Request, token: str | None = Depends(_key_header)) -> ApiKey:
    row = keys.authenticate(service(request).db, token)
    if row is None:
        raise HTTPException(401, "missing, invalid or revoked API key (send it in the `access_token` header)")
    name_key(row.id)
    wait = request.app.state.rate_limiter.retry_after(row.id)
    if wait is not None:
        raise HTTPException(
            429, f"too many requests for this key; retry in {wait} s", headers={"Retry-After": str(wait)}
        )
    return row


router = APIRouter(
    prefix="/v1", tags=["public"], responses={401: {"model": schemas.Error}, 429: {"model": schemas.Error}}
)
_NOT_FOUND = {404: {"model": schemas.Error, "description": "No such job for this key."}}


def _create(svc: JobService, key: ApiKey, body: schemas.CreateUploadSessionRequest) -> UploadSession:
    try:
        return svc.create_job(
            key.id, body.file_name, body.file_size, body.content_type, body.model, body.config.model_dump()
        )
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None


@router.post(
    "/create_upload_session",
    response_model=schemas.CreateUploadSessionResponse,
    responses={413: {"model": schemas.Error}},
)
def create_upload_session(
    body: schemas.CreateUploadSessionRequest, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)
):
    """Create a job and a signed upload URL (`session_uri`) for the seed's block upload."""
    upload = _create(svc, key, body)
    return {"session_uri": upload.session_uri, "job_id": upload.job.id}


@router.post("/start_upload", response_model=schemas.StartUploadResponse, responses={413: {"model": schemas.Error}})
def start_upload(
    body: schemas.CreateUploadSessionRequest, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)
):
    """Create a job and return the SAS token and URL parts for an Azure SDK upload; the SAS expires after 7 days:
    `BlobClient(account_url, container, blob, credential=sas_token).upload_blob(...)`."""
    upload = _create(svc, key, body)
    expires = datetime.now(UTC) + timedelta(seconds=svc.settings.upload_sas_seconds)
    return {"session_uri": upload.session_uri, "job_id": upload.job.id, **upload.sas_parts, "expires_at": expires}


_DIRECT_UPLOAD_DOC = {
    307: {
        "description": "Re-send the same PUT to `Location` (a Put Blob with a write SAS). The job id is in the "
        "`job_id` header (the vendor reference's), in `x-veil-job-id` and in the body."
    },
    400: {"model": schemas.Error},
    411: {"model": schemas.Error},
    413: {"model": schemas.Error},
}
_OPTIONS = "Options as query parameters (`enable_lp=True&blur_threshold=0.3`...), each a `model_config` key"


@router.put(
    "/direct_upload/{file_name}",
    status_code=307,
    response_model=schemas.DirectUploadResponse,
    responses=_DIRECT_UPLOAD_DOC,
    description="The vendor reference's form: create a job and redirect "
    "(307) the upload to the blob store; requires `x-ms-blob-type: BlockBlob`. "
    + _OPTIONS
    + "; an unknown parameter is a 422.",
)
async def direct_upload_named(
    request: Request,
    file_name: str = Path(..., max_length=1000),
    key: ApiKey = Depends(api_key),
    svc: JobService = Depends(service),
    model: str = Query("blur", max_length=100),
    model_config: str | None = Query(None, description="model_config as JSON text."),
):
    return await _direct_upload(request, key, svc, file_name, model, model_config, {"model", "model_config"})


@router.put(
    "/direct_upload",
    status_code=307,
    response_model=schemas.DirectUploadResponse,
    responses=_DIRECT_UPLOAD_DOC,
    description="Create a job and redirect (307) the upload to the blob store; "
    "requires `x-ms-blob-type: BlockBlob`. " + _OPTIONS + ", or all of them as `model_config=<JSON>`; "
    "an unknown parameter is a 422.",
)
async def direct_upload(
    request: Request,
    key: ApiKey = Depends(api_key),
    svc: JobService = Depends(service),
    file_name: str = Query("upload", max_length=1000, description="Name of the uploaded file."),
    model: str = Query("blur", max_length=100),
    model_config: str | None = Query(None, description="model_config as JSON text."),
):
    return await _direct_upload(
        request, key, svc, file_name, model, model_config, {"file_name", "model", "model_config"}
    )


async def _direct_upload(
    request: Request,
    key: ApiKey,
    svc: JobService,
    file_name: str,
    model: str,
    model_config: str | None,
    named: set[str],
) -> JSONResponse:
    if request.headers.get("x-ms-blob-type") != "BlockBlob":
        raise HTTPException(400, "the x-ms-blob-type header must be BlockBlob")
    length = request.headers.get("content-length")
    if length is None or not (length.isascii() and length.isdigit()):
        raise HTTPException(411, "Content-Length is required (send the file as bytes or a file object)")
    config = query_config(request, model_config, named)
    try:
        body = schemas.CreateUploadSessionRequest(
            file_name=file_name, file_size=int(length), model=model, model_config=config
        )
    except ValidationError as exc:
        raise HTTPException(422, schemas.validation_detail(exc.errors())) from None
    upload = _create(svc, key, body)
    try:  # the client sends the body before it reads our answer; let it finish, within the upload deadline
        async for _ in timed_body(request, int(length), UploadLimits.from_settings(svc.settings)):
            pass
    except BodyTooSlow:
        raise HTTPException(408, "the request body arrived too slowly", headers={"Connection": "close"}) from None
    job_id, url = upload.job.id, upload.session_uri
    return JSONResponse(
        {"job_id": job_id, "url": url, "session_uri": url},
        status_code=307,
        headers={"Location": url, "job_id": job_id, "x-veil-job-id": job_id},
    )


def query_config(request: Request, model_config: str | None, named: set[str]) -> dict:
    """`model_config` from the query: the JSON of `model_config=` and the options given one by one as
    parameters (Python-style `True`/`False` too). A parameter that is neither one of `named` nor a
    `model_config` key, a key given twice, or JSON that is not an object is a 422 naming it."""
    errors, config = [], {}
    if model_config:
        try:
            config = json.loads(model_config)
        except ValueError as exc:
            errors.append(_error("model_config", f"not valid JSON ({exc})", "json_invalid"))
        if not isinstance(config, dict):
            errors.append(_error("model_config", "must be a JSON object", "dict_type"))
            config = {}
    for name, value in request.query_params.multi_items():
        if name in named:
            continue
        field = ModelConfig.model_fields.get(name)
        if field is None:
            errors.append(
                _error(
                    name,
                    "unknown parameter (options: "
                    + ", ".join(ModelConfig.model_fields)
                    + f"; also {', '.join(sorted(named))})",
                    "extra_forbidden",
                )
            )
        elif name in config:
            errors.append(_error(name, "given more than once", "duplicate"))
        else:
            try:
                config[name] = TypeAdapter(field.annotation).validate_python(value, strict=False)
            except ValidationError as exc:
                errors.append(_error(name, exc.errors()[0]["msg"], exc.errors()[0]["type"]))
    if errors:
        raise HTTPException(422, schemas.validation_detail(errors))
    return config


def _error(name: str, msg: str, kind: str) -> dict:
    return {"loc": ["query", name], "msg": msg, "type": kind}


@router.post(
    "/approve_job/{job_id}",
    response_model=schemas.ApproveResponse,
    responses={
        202: {
            "model": schemas.ApproveResponse,
            "description": "Already approved (or finished); or refused at pricing, expired or "
            "cancelled before approval: `detail` says why.",
        },
        302: {
            "model": schemas.ApproveResponse,
            "description": "The upload is not complete yet; retry later (no Location header).",
        },
        402: {"model": schemas.Error, "description": "The key's balance does not cover the cost."},
        **_NOT_FOUND,
    },
)
def approve_job(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Reserve the job's `job_total_credit_cost` from the key's balance and queue it."""
    try:
        outcome = svc.approve(key.id, job_id)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InsufficientCredits as exc:
        raise HTTPException(402, str(exc)) from None
    job = svc.get_job(job_id, key.id)
    # A job refused at pricing (or expired, or cancelled) answers 202 with the reason, never a 4xx: the seed's
    # sample client retries every other status forever, and reads the failure from job_result after a 202.
    never_ran = job.approved_at is None
    status, detail = {
        "approved": (200, "job approved"),
        "already": (
            202,
            f"job not approved ({job.status}): {svc.describe(job)}"
            if never_ran
            else f"job already approved ({job.status})",
        ),
        "waiting": (302, "waiting for the upload to complete; retry in a few seconds"),
    }[outcome]
    # A 302 must carry no Location, or `requests` would follow it as a GET (notes §4).
    return JSONResponse(
        {
            "job_id": job.id,
            "detail": detail,
            "job_total_credit_cost": job.total_cost,
            "total_credit_cost": job.total_cost,
        },
        status_code=status,
    )


@router.get("/job_result/{job_id}", response_model=schemas.JobReport, responses=_NOT_FOUND)
def job_result(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """The JobReport: status, cost, and one task per output file with its download link."""
    try:
        return svc.report(svc.get_job(job_id, key.id))
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None


router.add_api_route(
    "/get_job_result/{job_id}",
    job_result,
    methods=["GET"],
    response_model=schemas.JobReport,
    responses=_NOT_FOUND,
    summary="Job Result (alias of /job_result)",
)


@router.post("/notify_on_job_status", response_model=schemas.NotifyResponse, responses=_NOT_FOUND)
def notify_on_job_status(
    body: schemas.NotifyRequest, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)
):
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
    return {
        "callback_url": body.callback_url,
        "job_id": body.job_id,
        "detail": "callback registered",
        "signing_secret": svc.notifier.callback_secret(key.id),
    }


@router.get("/jobs", response_model=schemas.JobList)
def list_jobs(
    key: ApiKey = Depends(api_key),
    svc: JobService = Depends(service),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=schemas.BIGINT_MAX),
):
    """This key's jobs, newest first."""
    jobs, total = svc.list_jobs(key.id, limit, offset)
    return {"jobs": [svc.report(job) for job in jobs], "total": total, "limit": limit, "offset": offset}


@router.post(
    "/jobs/{job_id}/cancel", response_model=schemas.JobReport, responses={**_NOT_FOUND, 409: {"model": schemas.Error}}
)
def cancel_job(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Cancel a job: at once (and refunded) before processing started, else before its next file, refunding what
    the files not processed cost (everything if no file was completed)."""
    return _report_after(svc, lambda: svc.cancel(key.id, job_id))


@router.delete(
    "/jobs/{job_id}/files", response_model=schemas.JobReport, responses={**_NOT_FOUND, 409: {"model": schemas.Error}}
)
def delete_job_files(job_id: str, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)):
    """Delete a finished job's input and output files from the store (download links stop working)."""
    return _report_after(svc, lambda: svc.delete_files(key.id, job_id))


@router.post(
    "/render_job/{job_id}",
    status_code=202,
    response_model=schemas.JobReport,
    responses={**_NOT_FOUND, 402: {"model": schemas.Error}, 409: {"model": schemas.Error}},
)
def render_job(
    job_id: str, body: schemas.RenderRequest, key: ApiKey = Depends(api_key), svc: JobService = Depends(service)
):
    """Render the job's files again from their detections documents, without detecting: `model_config`
    overrides (thresholds, mask, style) and per-task edits (docs/detections.md). A job awaiting review gets its
    first render included; a completed job's render costs a fraction of its price (402 when the balance does not
    cover it). Progress as for a job, then 100 with new download links; the old ones work until then."""
    try:
        return svc.report(request_render(svc, key.id, job_id, body.config, body.edits))
    except InvalidRender as exc:
        raise HTTPException(422, [{"loc": exc.loc, "msg": exc.msg, "type": "value_error"}]) from None
    except InsufficientCredits as exc:
        raise HTTPException(402, str(exc)) from None
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None


def _report_after(svc: JobService, action) -> dict:
    try:
        return svc.report(action())
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None
