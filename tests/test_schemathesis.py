"""Issue 9 acceptance: schemathesis generates requests from the app's own OpenAPI (bounded examples, valid and
invalid ones, in-process ASGI) and no answer is a 5xx. Half the calls carry a valid API key and admin token,
so validation and the handlers behind it are reached, not only the 401s.

Issue 18: the same for the admin panel's routes (their query parameters; kept out of /docs, so their schema
is made here from the panel's routers) and the Event Grid webhook, half the calls signed in (a panel session
cookie) and with the webhook's secret. The review routes' signed-in calls name a real video job with its
detections document (made once for the module when the detection models are here), so their query parameters
(start, count, face, plate, frame, side) reach the document and the frame decoder, not only a 404."""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from _service_helpers import new_key, settings_for
from veil.api import events
from veil.api.app import create_app
from veil.jobs import admins

pytestmark = pytest.mark.filterwarnings("ignore")
EXAMPLES = 30  # per operation: about 25 s of CPU for the whole API

_data = tempfile.TemporaryDirectory(prefix="veil-schemathesis-")
_app = create_app(
    settings_for(
        Path(_data.name),
        admin_token="admin-secret",
        events_secret="hook-secret",
        admin_email="ops@example.com",
        admin_password="panel-password-1",
    )
)
PANEL_SCHEMA = "/panel-and-webhook-openapi.json"


def _panel_and_webhook_schema() -> bytes:
    """The OpenAPI of the panel's routers (under /admin) and the webhook, as a FastAPI app of their own."""
    from veil.api.panel import accounts, auth, jobs, keys, reports, review

    documented = FastAPI(title="Veil panel and webhook")
    for module in (auth, keys, jobs, reports, review, accounts):
        documented.include_router(module.router, prefix="/admin")
    documented.include_router(events.router)
    return json.dumps(documented.openapi()).encode()


async def _without_lifespan(scope, receive, send):
    """The app for schemathesis, which runs an ASGI app's lifespan around every call: here it runs once, for
    the module (the fixture below), as it does in a real server."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http" and scope["path"] == PANEL_SCHEMA:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _panel_and_webhook_schema()})
        return
    await _app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan)
panel_schema = schemathesis.openapi.from_asgi(PANEL_SCHEMA, _without_lifespan)


@pytest.fixture(scope="module", autouse=True)
def _running():
    with TestClient(_app) as http:
        _app.state.key = new_key(_app.state.service, credits=10)
        _app.state.session = admins.sign_in(_app.state.service.db, "ops@example.com", "panel-password-1", 12).token
        _app.state.review_job = _video_job(http)
        yield
    _data.cleanup()


def _video_job(http) -> str | None:
    """A finished 2 s video job with its detections document (for the review routes), or None without the
    detection models (those routes then see random job ids only)."""
    from _service_helpers import seed_upload
    from test_admin_previews import _video
    from veil.engine.errors import ModelsMissing
    from veil.jobs.runner import process_job

    try:
        from veil.engine.weights import model_path

        model_path("centerface"), model_path("plates")
    except (ModelsMissing, ImportError):
        return None
    key, data = new_key(_app.state.service, credits=100), _video()
    session = http.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": "clip.mp4", "file_size": len(data), "model_config": {}},
    ).json()
    seed_upload(http, session["session_uri"], data)
    assert http.post(f"/v1/approve_job/{session['job_id']}", headers={"access_token": key}).status_code == 200
    process_job(session["job_id"], _app.state.service)
    job = _app.state.service.get_job(session["job_id"])
    assert job.status == "completed" and job.tasks[0].detections_blob, job.status
    return job.id


def _half(case) -> bool:
    return zlib.crc32(repr((case.body, case.query, case.path_parameters)).encode()) % 2 == 0


def _no_server_error(case) -> None:
    response = case.call()
    assert response.status_code < 500, (
        case.method,
        case.path,
        case.path_parameters,
        case.query,
        case.body,
        response.text[:500],
    )


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case) -> None:
    if _half(case):
        case.headers = {**(case.headers or {}), "access_token": _app.state.key, "Authorization": "Bearer admin-secret"}
    _no_server_error(case)


@panel_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_panel_and_webhook_no_server_errors(case) -> None:
    if _half(case):
        case.headers = {**(case.headers or {}), "Cookie": f"veil_admin={_app.state.session}"}
        if case.path.startswith("/events/"):
            case.query = {**(case.query or {}), "secret": "hook-secret"}
        if "/review/" in case.path and _app.state.review_job:  # the real job's document and frames
            which = "before" if zlib.crc32(repr(case.query).encode()) % 2 else "after"
            case.path_parameters = {**case.path_parameters, "job_id": _app.state.review_job, "index": 0}
            if "which" in case.path_parameters:
                case.path_parameters["which"] = which
    _no_server_error(case)
