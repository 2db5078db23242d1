"""The admin panel at /admin: server-rendered pages (Jinja2) over the same `veil.jobs` functions as the
JSON admin API, with their templates and static files beside them. `install(app)` wires it in."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import accounts, auth, jobs, keys, reports, review
from .gate import SignInGate
from .headers import PanelHeaders
from .render import HERE, render
from .security import FormRefused, RoleRefused, SignInRequired

STATIC_URL = "/admin/static"


def install(app: FastAPI) -> None:
    app.add_middleware(PanelHeaders)
    settings = app.state.settings
    app.state.signin_gate = SignInGate(
        settings.admin_signin_concurrency,
        per_source=settings.admin_signin_rate,
        overall=settings.admin_signin_rate_overall,
    )
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="admin-static")
    for module in (auth, keys, jobs, review, reports, accounts):
        app.include_router(module.router, prefix="/admin", include_in_schema=False)

    @app.get("/admin/{rest:path}", include_in_schema=False)
    def _no_such_page(request: Request, rest: str):
        if rest.startswith("api/"):  # the JSON admin API answers in JSON
            raise HTTPException(404, "Not Found")
        return render(
            request,
            "message.html",
            status_code=404,
            title="No such page",
            message="There is no panel page at this address.",
        )

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired):
        return RedirectResponse(f"/admin/login?next={request.url.path}", status_code=303)

    @app.exception_handler(FormRefused)
    async def _refused(request: Request, exc: FormRefused):
        return render(
            request,
            "message.html",
            status_code=403,
            title="Form refused",
            message="This form was not sent from an open panel page (its security token is missing or "
            "out of date). Go back, reload the page and try again.",
        )

    @app.exception_handler(RoleRefused)
    async def _role_refused(request: Request, exc: RoleRefused):
        return render(
            request,
            "message.html",
            status_code=403,
            title="Not for your role",
            message="Your account's role does not allow this page or action. An admin can change "
            "roles on the Accounts page.",
        )
