"""Sign-in and sign-out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ...db.models import AdminUser
from ...jobs import admins
from . import security
from .gate import SignInBusy
from .render import render

router = APIRouter()


def _next_page(value: str | None, default: str = "/admin/keys") -> str:
    """Only a panel path (never another site) is a place to go back to after signing in."""
    if value and value.startswith("/admin/") and not value.startswith("/admin/login") and "//" not in value:
        return value
    return default


def start_page(admin: AdminUser) -> str:
    """Where an account starts: keys for admins, the review queue for reviewers and viewers."""
    return "/admin/keys" if admin.role == "admin" else "/admin/jobs?queue=review"


@router.get("")
@router.get("/")
def home(admin: AdminUser = Depends(security.current_admin)) -> RedirectResponse:
    return RedirectResponse(start_page(admin), status_code=303)


def _signin_page(
    request: Request, error: str = "", status_code: int = 200, email: str = "", next_page: str | None = None
):
    binding, new = security.signin_binding(request)
    csrf = security.csrf_token(security.form_secret(request), binding)
    response = render(
        request,
        "login.html",
        status_code=status_code,
        csrf=csrf,
        error=error,
        email=email,
        next_page=_next_page(next_page or request.query_params.get("next"), ""),
    )
    if new:
        security.set_cookie(request, response, security.SIGNIN_COOKIE, binding, max_age=3600)
    return response


@router.get("/login")
def login_page(request: Request):
    return _signin_page(request)


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    security.check_signin_form(request, form.get("csrf_token"))
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    svc, source = request.app.state.service, admins.source_key(request.client.host if request.client else None)
    try:
        signed_in = await request.app.state.signin_gate.run(
            source,
            admins.sign_in,
            svc.db,
            email,
            password,
            svc.settings.admin_session_hours,
            source,
            known=admins.known_source(email, source),  # the owner's usual address: a reserved share
        )
    except SignInBusy:
        response = _signin_page(
            request, "Too many sign-ins at once: try again in a moment.", 429, email, form.get("next")
        )
        response.headers["Retry-After"] = "1"
        return response
    except admins.SignInLocked as exc:
        return _signin_page(
            request,
            f"Too many failed sign-ins: wait {exc.seconds} s before trying again.",
            429,
            email,
            form.get("next"),
        )
    if signed_in is None:
        return _signin_page(request, "Wrong email or password.", 401, email, form.get("next"))
    response = RedirectResponse(_next_page(form.get("next"), start_page(signed_in.admin)), status_code=303)
    security.set_cookie(
        request,
        response,
        security.SESSION_COOKIE,
        signed_in.token,
        max_age=int(svc.settings.admin_session_hours * 3600),
    )
    response.delete_cookie(security.SIGNIN_COOKIE, path=security.COOKIE_PATH)
    return response


@router.post("/logout")
def logout(request: Request, form: dict = Depends(security.checked_form)):
    admins.sign_out(request.app.state.service.db, request.cookies.get(security.SESSION_COOKIE))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path=security.COOKIE_PATH)
    return response
