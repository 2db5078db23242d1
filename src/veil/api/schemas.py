"""Request and response bodies of the public API, with the seed's field names (they make the OpenAPI at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..db.models import JobState
from ..engine.config import ModelConfig

BIGINT_MAX = 2**63 - 1  # the database's BIGINT: every integer a request stores or compares stays inside it
MODELS = ("blur",)  # the vendor's list also has `syn` (synthetic faces): no permissively licensed package ships one


def check_model(value: str) -> str:
    """`value` if this server offers that model; a ValueError naming the ones it offers otherwise."""
    if value not in MODELS:
        raise ValueError(f"model {value[:40]!r} is not offered by this server; it offers: {', '.join(MODELS)}")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), populate_by_name=True)


class _Request(_Body):
    """A request body: JSON types exactly (no "10" for 10, no "yes" for true), finite numbers, valid Unicode."""

    model_config = ConfigDict(protected_namespaces=(), populate_by_name=True, strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _encodable(cls, value):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
        return value


def validation_detail(errors: list[dict]) -> list[dict]:
    """Pydantic's errors without the input echoed back (it may be NaN, a lone surrogate or megabytes long),
    every string made JSON- and UTF-8-safe: the field (`loc`) and the problem (`msg`) name what is wrong."""

    def text(value) -> str | int:
        return value if isinstance(value, int) else str(value).encode("utf-8", "backslashreplace").decode()[:200]

    return [
        {
            "loc": [text(part) for part in error.get("loc", ())],
            "msg": text(error.get("msg", "")),
            "type": text(error.get("type", "")),
        }
        for error in errors
    ]


class CreateUploadSessionRequest(_Request):
    file_name: str = Field(
        ...,
        min_length=1,
        max_length=1000,
        description="Name of the file to upload "
        "(only its last path component is kept, at most 200 bytes of it in UTF-8).",
    )
    file_size: int | None = Field(
        None, ge=0, le=BIGINT_MAX, description="Size in bytes; at most 4 GiB (413 above). The upload must match it."
    )
    content_type: str = Field(
        "octet-stream", max_length=100, description="The upload method you will use (informational)."
    )
    model: str = Field(
        "blur",
        max_length=100,
        json_schema_extra={"enum": list(MODELS)},
        description="Processing model: `blur` (the vendor's `syn` is not offered: 422).",
    )
    config: ModelConfig = Field(
        default_factory=ModelConfig,
        alias="model_config",
        description="Detection/redaction options; unknown keys are rejected.",
    )

    @field_validator("model")
    @classmethod
    def _offered(cls, value: str) -> str:
        return check_model(value)


class CreateUploadSessionResponse(_Body):
    session_uri: str = Field(
        ...,
        description="Blob URL with a write SAS: Put Block (`&comp=block&blockid=...`) "
        "then Put Block List (`&comp=blocklist`), or a single Put Blob.",
    )
    job_id: str


class StartUploadResponse(CreateUploadSessionResponse):
    sas_token: str = Field(..., description="The SAS query string (without `?`), valid for 7 days.")
    account_url: str = Field(..., description="`BlobServiceClient(account_url, credential=sas_token)`.")
    container: str
    blob: str
    expires_at: datetime


class DirectUploadResponse(_Body):
    job_id: str = Field(..., description="Also in the `job_id` and `x-veil-job-id` headers.")
    url: str = Field(..., description="Where the body is redirected to (307, same as `Location`).")
    session_uri: str = Field(..., description="The same URL (the seed's name for it).")


class ApproveResponse(_Body):
    job_id: str
    detail: str
    job_total_credit_cost: int | None = None
    total_credit_cost: int | None = Field(None, description="The same, under the vendor reference's name.")


class TaskReport(_Body):
    task_id: int
    input_file: str = Field(..., description="Name of the input file (inside the archive, for archives).")
    output_file: str = Field(..., description="Safe bare file name to save the output under.")
    download_link: str | None = Field(
        None,
        description="Signed, expiring URL of the output (Get Blob, "
        "Range supported); null until the task completed or after deletion.",
    )
    status: Literal["pending", "running", "completed", "failed"]
    error: str | None = Field(None, description="Why this file failed.")
    detections: int | None = Field(None, description="Regions redacted in this file.")
    detections_link: str | None = Field(
        None,
        description="Signed, expiring URL of this file's detections "
        "document (docs/detections.md): every candidate, for review and renders.",
    )
    report: dict | None = Field(
        None, description="What was found and drawn, and where a reviewer should look first (docs/detections.md)."
    )


class JobReport(_Body):
    job_id: str
    job_status: int = Field(
        ...,
        description="0 waiting (upload, approval or queue), 1–99 progress percent, "
        "100 completed, 200 failed or cancelled.",
    )
    job_status_description: str
    job_total_credit_cost: int | None = Field(
        None, description="Credits approval reserves; known once the upload is complete."
    )
    total_credit_cost: int | None = Field(None, description="The same, under the vendor reference's name.")
    state: JobState = Field(..., description="Veil's state name behind job_status.")
    file_name: str
    file_size: int | None
    model: str
    model_config_: dict = Field(..., alias="model_config")
    credits_charged: int
    credits_refunded: int
    files_deleted: bool
    created_at: datetime
    uploaded_at: datetime | None
    approved_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    tasks: list[TaskReport]


class RenderRequest(_Request):
    config: dict = Field(
        default_factory=dict,
        alias="model_config",
        description="Overrides of the job's model_config: thresholds, mask_blur, style, video_crf; turning a kind off.",
    )
    edits: dict[str, list[dict]] = Field(
        default_factory=dict,
        max_length=10_000,
        description="Per task index (as text), a list of edits (docs/detections.md): add, remove, keep, remove_track.",
    )


class JobList(_Body):
    jobs: list[JobReport]
    total: int
    limit: int
    offset: int


class NotifyRequest(_Request):
    callback_url: str = Field(..., max_length=2048, description="Where Veil POSTs the JobReport (JSON, HMAC-signed).")
    job_id: str | None = Field(None, description="Only this job; omit for every job of the key.")


class NotifyResponse(_Body):
    callback_url: str
    job_id: str | None
    detail: str
    signing_secret: str = Field(
        ...,
        description="This key's HMAC-SHA256 secret: verify `X-Veil-Signature` "
        'against HMAC(secret, "<X-Veil-Timestamp>." + raw body).',
    )


class Error(_Body):
    detail: str | list


# ------------------------------------------------------------------------------ admin
class KeyCreate(_Request):
    credits: int = Field(0, ge=0, le=BIGINT_MAX)
    name: str = Field("", max_length=200)


class KeyInfo(_Body):
    id: str
    name: str
    credits: int
    revoked: bool
    created_at: datetime


class KeyCreated(KeyInfo):
    key: str = Field(..., description="The API key itself; shown only now.")


class CreditsAdd(_Request):
    amount: int = Field(
        ..., ge=-BIGINT_MAX, le=BIGINT_MAX, description="Credits to add (negative to correct a balance)."
    )
    reason: str = Field("admin", max_length=500)
