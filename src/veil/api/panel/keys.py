"""Keys: the table, creating (the key shown once), renaming, revoking, credits with a reason, the ledger."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ...db.models import AdminUser
from ...jobs import credits, keys, reports
from . import security
from .render import render

router = APIRouter()
_DONE = {
    "renamed": "Name saved.",
    "revoked": "Key revoked: requests with it now get 401.",
    "credits": "Credits booked; the ledger line is below.",
}


def _actor(admin: AdminUser) -> str:
    return f"admin:{admin.email}"


@router.get("/keys")
def keys_page(request: Request, admin: AdminUser = Depends(security.admin_only)):
    return _keys(request)


@router.post("/keys")
def create_key(request: Request, form: dict = Depends(security.admin_form)):
    name = form.get("name", "").strip()[:200]
    opening = _whole_number(form.get("credits", "0") or "0")
    if opening is None or opening < 0:
        return _keys(request, 422, error="Opening credits must be a whole number, 0 or more.", name=name)
    try:
        key, row = keys.create_key(request.app.state.service.db, opening, name, actor=_actor(request.state.admin))
    except ValueError as exc:  # above the largest balance
        return _keys(request, 422, error=f"Opening credits: {exc}.", name=name)
    return _keys(request, new_key=key, new_row=row)


def _keys(request: Request, status_code: int = 200, **extra):
    """The Keys page (every key's row), with what the form's answer adds."""
    rows = reports.key_rows(request.app.state.service.db)
    return render(request, "keys.html", status_code=status_code, active="keys", rows=rows, **extra)


def _key_page(request: Request, key_id: str, status_code: int = 200, **extra):
    db = request.app.state.service.db
    rows = reports.key_rows(db, key_id)
    if not rows:
        return render(
            request,
            "message.html",
            status_code=404,
            title="No such key",
            message="There is no API key with this id.",
            active="keys",
        )
    return render(
        request,
        "key.html",
        status_code=status_code,
        active="keys",
        row=rows[0],
        ledger=list(reversed(credits.ledger(db, key_id))),
        done=_DONE.get(request.query_params.get("done", "")),
        **extra,
    )


@router.get("/keys/{key_id}")
def key_page(request: Request, key_id: str, admin: AdminUser = Depends(security.admin_only)):
    return _key_page(request, key_id)


@router.post("/keys/{key_id}/rename")
def rename(request: Request, key_id: str, form: dict = Depends(security.admin_form)):
    try:
        keys.rename_key(request.app.state.service.db, key_id, form.get("name", ""))
    except keys.KeyNotFound:
        return _key_page(request, key_id)
    return RedirectResponse(f"/admin/keys/{key_id}?done=renamed", status_code=303)


@router.post("/keys/{key_id}/revoke")
def revoke(request: Request, key_id: str, form: dict = Depends(security.admin_form)):
    try:
        keys.revoke_key(request.app.state.service.db, key_id)
    except keys.KeyNotFound:
        return _key_page(request, key_id)
    return RedirectResponse(f"/admin/keys/{key_id}?done=revoked", status_code=303)


@router.post("/keys/{key_id}/credits")
def change_credits(request: Request, key_id: str, form: dict = Depends(security.admin_form)):
    amount, reason = _whole_number(form.get("amount", "")), form.get("reason", "").strip()[:500]
    if amount is None or amount == 0:
        return _key_page(
            request,
            key_id,
            422,
            error="Amount must be a whole number other than 0 (negative to take credits away).",
            reason=reason,
        )
    if not reason:
        return _key_page(request, key_id, 422, error="Give a reason: it goes into the ledger.", amount=amount)
    try:
        credits.add_credits(request.app.state.service.db, key_id, amount, reason, actor=_actor(request.state.admin))
    except ValueError as exc:  # below zero or above the largest balance
        return _key_page(request, key_id, 409, error=f"Not changed: {exc}.", amount=amount, reason=reason)
    return RedirectResponse(f"/admin/keys/{key_id}?done=credits", status_code=303)


def _whole_number(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None
