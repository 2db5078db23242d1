"""Panel sign-in state and form protection.

- The session cookie (`veil_admin`) holds a random token (see `veil.jobs.admins`): HttpOnly,
  SameSite=Lax, Path=/admin, Secure when the panel is reached over HTTPS.
- Every form carries a CSRF token: an HMAC of the session token (or, on the sign-in form, of a random
  pre-session cookie) keyed with the deployment's secret (the same on every API server). A cross-site
  page can make the browser send the cookie, but it cannot read or compute the token, so its post is
  refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from fastapi.responses import Response

from ...db.models import AdminUser
from ...jobs import admins

SESSION_COOKIE = "veil_admin"
SIGNIN_COOKIE = "veil_signin"  # binds the sign-in form's CSRF token before there is a session
COOKIE_PATH = "/admin"


class SignInRequired(Exception):
    """No valid session: the panel answers with a redirect to the sign-in page."""


class FormRefused(Exception):
    """A post without a valid CSRF token."""


class RoleRefused(Exception):
    """A signed-in account whose role does not allow this page or action: a 403 page."""


REVIEWERS = ("admin", "reviewer")  # who may edit and render; viewers only look


def csrf_token(secret: str, bound_to: str) -> str:
    return hmac.new(secret.encode(), b"csrf:" + bound_to.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: str, bound_to: str | None, presented: str | None) -> bool:
    if not bound_to or not presented:
        return False
    return hmac.compare_digest(csrf_token(secret, bound_to), presented)


def form_secret(request: Request) -> str:
    return request.app.state.service.notifier.deployment_secret()  # shared by every API server of a deployment


def is_https(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.base_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="lax", secure=is_https(request)
    )


def signin_binding(request: Request) -> tuple[str, bool]:
    """(the pre-session value the sign-in form's token is bound to, whether it is new and must be set)."""
    value = request.cookies.get(SIGNIN_COOKIE)
    return (value, False) if value else (secrets.token_urlsafe(16), True)


def current_admin(request: Request) -> AdminUser:
    """Dependency of every signed-in page: the admin, or SignInRequired."""
    admin = admins.session_admin(request.app.state.service.db, request.cookies.get(SESSION_COOKIE))
    if admin is None:
        raise SignInRequired()
    request.state.admin = admin
    request.state.csrf = csrf_token(form_secret(request), request.cookies[SESSION_COOKIE])
    return admin


def admin_only(request: Request) -> AdminUser:
    """Dependency of the pages only the `admin` role sees (keys, credits, usage, deliveries, system, accounts)."""
    return _role(current_admin(request), ("admin",))


def reviewer(request: Request) -> AdminUser:
    """Dependency of what edits or renders (admin and reviewer; a viewer gets 403)."""
    return _role(current_admin(request), REVIEWERS)


def _role(admin: AdminUser, roles: tuple[str, ...]) -> AdminUser:
    if admin.role not in roles:
        raise RoleRefused()
    return admin


async def checked_form(request: Request) -> dict[str, str]:
    """Dependency of every signed-in POST: the form's fields, once its CSRF token is checked."""
    current_admin(request)
    form = await request.form()
    if not csrf_valid(form_secret(request), request.cookies.get(SESSION_COOKIE), form.get("csrf_token")):
        raise FormRefused()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def admin_form(request: Request) -> dict[str, str]:
    """`checked_form` for the admin role's actions."""
    form = await checked_form(request)
    _role(request.state.admin, ("admin",))
    return form


def checked_call(request: Request) -> AdminUser:
    """Dependency of the review pages' JSON posts (fetch): a reviewer or admin, and the CSRF token in the
    X-CSRF-Token header."""
    admin = reviewer(request)
    if not csrf_valid(form_secret(request), request.cookies.get(SESSION_COOKIE), request.headers.get("x-csrf-token")):
        raise FormRefused()
    return admin


def check_signin_form(request: Request, presented: str | None) -> None:
    if not csrf_valid(form_secret(request), request.cookies.get(SIGNIN_COOKIE), presented):
        raise FormRefused()
