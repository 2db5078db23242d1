"""Accounts: every panel account with its role; admins change roles here (accounts are made with
`veil admin create --role` or VEIL_ADMIN_EMAIL at start-up)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ...db.models import AdminUser
from ...jobs import admins
from . import security
from .render import render

router = APIRouter()
ROLE_HELP = {
    "admin": "everything: keys, credits, usage, deliveries, system, accounts, jobs and review",
    "reviewer": "review queue, jobs, review and render; no keys, credits, usage, deliveries or system",
    "viewer": "jobs and review pages, read only",
}


def _page(request: Request, status_code: int = 200, error: str = "", done: str = ""):
    return render(
        request,
        "accounts.html",
        status_code=status_code,
        active="accounts",
        error=error,
        done=done,
        accounts=admins.list_admins(request.app.state.service.db),
        roles=ROLE_HELP,
    )


@router.get("/accounts")
def accounts_page(request: Request, admin: AdminUser = Depends(security.admin_only)):
    return _page(request, done="Role saved." if request.query_params.get("done") == "role" else "")


@router.post("/accounts/{account_id}/role")
def change_role(request: Request, account_id: str, form: dict = Depends(security.admin_form)):
    try:
        admins.set_role(request.app.state.service.db, account_id, form.get("role", ""))
    except admins.AdminError as exc:
        return _page(request, 409, error=f"Not changed: {exc}.")
    return RedirectResponse("/admin/accounts?done=role", status_code=303)
