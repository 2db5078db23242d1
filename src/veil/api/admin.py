"""Admin HTTP API under /admin/api, behind `VEIL_ADMIN_TOKEN` (header `Authorization: Bearer <token>`).
Disabled (403) while no token is configured."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..jobs import credits, keys
from ..jobs.service import JobService
from . import schemas
from .public import service

_bearer = HTTPBearer(auto_error=False, description="VEIL_ADMIN_TOKEN")


def admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    token = service(request).settings.admin_token
    if not token:
        raise HTTPException(403, "the admin API is disabled: set VEIL_ADMIN_TOKEN")
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong admin token (Authorization: Bearer <VEIL_ADMIN_TOKEN>)")


router = APIRouter(prefix="/admin/api", tags=["admin"], dependencies=[Depends(admin)])


def _info(row) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "credits": row.credits,
        "revoked": row.revoked,
        "created_at": row.created_at,
    }


def _find(svc: JobService, key_or_id: str):
    try:
        return keys.find_key(svc.db, key_or_id)
    except keys.KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/keys", response_model=schemas.KeyCreated, status_code=201)
def create_key(body: schemas.KeyCreate, svc: JobService = Depends(service)):
    """Create an API key; the key itself is returned only here."""
    key, row = keys.create_key(svc.db, body.credits, body.name, actor="admin-api")
    return {**_info(row), "key": key}


@router.get("/keys", response_model=list[schemas.KeyInfo])
def list_keys(svc: JobService = Depends(service)):
    return [_info(row) for row in keys.list_keys(svc.db)]


@router.post("/keys/{key_or_id}/revoke", response_model=schemas.KeyInfo)
def revoke_key(key_or_id: str, svc: JobService = Depends(service)):
    _find(svc, key_or_id)
    return _info(keys.revoke_key(svc.db, key_or_id))


@router.post("/keys/{key_or_id}/credits", response_model=schemas.KeyInfo)
def add_credits(key_or_id: str, body: schemas.CreditsAdd, svc: JobService = Depends(service)):
    row = _find(svc, key_or_id)
    try:
        credits.add_credits(svc.db, row.id, body.amount, body.reason, actor="admin-api")
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return _info(keys.get_key(svc.db, row.id))


@router.get("/jobs", response_model=schemas.JobList)
def list_jobs(
    svc: JobService = Depends(service),
    key_id: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=schemas.BIGINT_MAX),
):
    """Every key's jobs (or one key's), newest first."""
    jobs, total = svc.list_jobs(key_id, limit, offset)
    return {"jobs": [svc.report(job) for job in jobs], "total": total, "limit": limit, "offset": offset}
