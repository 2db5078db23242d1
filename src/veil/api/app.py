"""`create_app(settings)`: the whole service on one port — public API (/v1), embedded blob endpoint,
admin API (/admin/api), admin panel (/admin), Event Grid webhook (/events), /healthz, /readyz and /metrics
(`health`), OpenAPI (/docs, /redoc, their
assets served from the pinned `fastapi-offline` wheel so they render offline) — with the embedded worker,
the sweeper (leases, re-sends, upload polling, housekeeping) and the Service Bus consumer (when configured)
started and stopped in the lifespan."""

from __future__ import annotations

import logging
import threading
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..jobs.admins import ensure_admin
from ..jobs.service import JobService, build_service
from ..logs import key_scope
from ..metrics import database_registry
from ..queue.sweeper import Sweeper
from ..settings import Settings
from ..storage.local import BLOB_PATH_PREFIX
from . import admin, events, health, panel, public
from .blob import UploadLimits, create_blob_router
from .body_limit import BodyLimit
from .panel.params import invalid_page, is_panel_page
from .ratelimit import KeyRateLimiter
from .schemas import validation_detail

log = logging.getLogger("veil.api")


def create_app(settings: Settings | None = None, service: JobService | None = None) -> FastAPI:
    settings = settings or Settings()
    worker = None
    if service is None:
        service = build_service(settings)
    if settings.admin_email and settings.admin_password:
        if ensure_admin(service.db, settings.admin_email, settings.admin_password):
            log.info("created the admin panel account %s (VEIL_ADMIN_EMAIL)", settings.admin_email)
    if settings.worker == "embedded":
        from ..queue.embedded import EmbeddedWorker  # lazy: it loads the engine, which API-only servers never need

        worker = EmbeddedWorker(service, settings.worker_concurrency, settings.worker_poll_seconds)
        service.dispatch = worker.wake
    elif settings.worker == "celery":
        from ..queue.celery_app import wire  # lazy: Celery is an optional dependency (veil[celery])

        wire(service)

    sweeper = Sweeper(service, api=True)
    stop_events = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if worker is not None:
            worker.start()
        else:
            service.price_pending()
        sweeper.start()
        if settings.servicebus_connection_string and settings.servicebus_in_serve:
            from ..events.servicebus import consume  # lazy: azure-servicebus is optional (veil[azure])

            threading.Thread(
                target=consume,
                name="veil-events",
                daemon=True,
                args=(service, settings.servicebus_connection_string, settings.servicebus_queue, stop_events),
            ).start()
        try:
            yield
        finally:
            stop_events.set()
            sweeper.stop()
            if worker is not None:
                worker.stop(settings.shutdown_grace_seconds)
            for pool in app.state.readiness_pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            service.close()

    app = FastAPI(
        title="Veil",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Anonymization of faces and licence plates; the Cloud Public API under /v1. "
        "Operators: the admin panel is at [/admin](/admin).",
    )
    app.add_middleware(
        BodyLimit,
        limit=settings.max_json_body_bytes,
        per_prefix={BLOB_PATH_PREFIX + "/": None, "/v1/direct_upload": None, "/events/": 1024 * 1024},
    )
    app.state.service = service
    app.state.settings = settings
    app.state.rate_limiter = KeyRateLimiter(settings.api_rate_limit, settings.api_rate_limit_storage)
    app.state.metrics_registry = database_registry(service.db)
    app.state.readiness_pools = {}
    app.add_middleware(_KeyScope)

    app.include_router(public.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(events.router)
    panel.install(app)
    _offline_docs(app)
    app.include_router(
        create_blob_router(
            service.store, service.on_blob_created, UploadLimits.from_settings(settings), service.upload_rule
        )
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if is_panel_page(request):  # a page of the panel answers with a page
            return invalid_page(request, exc)
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex
        log.error("request %s %s failed (request id %s)", request.method, request.url.path, request_id, exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; quote this request id when reporting it", "request_id": request_id},
            status_code=500,
        )

    return app


class _KeyScope:
    """Each HTTP request's log lines (its access line included) name the API key it authenticated with."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with key_scope():
            await self.app(scope, receive, send)


def _offline_docs(app: FastAPI) -> None:
    """/docs and /redoc with Swagger UI's and ReDoc's files from the fastapi-offline wheel (no CDN)."""
    assets = "/docs-assets"
    app.mount(assets, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url="/admin/static/favicon.svg",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url="/admin/static/favicon.svg",
            with_google_fonts=False,
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("veil")
    except PackageNotFoundError:  # pragma: no cover
        return "0"
