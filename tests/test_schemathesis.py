"""Issue 9 acceptance: schemathesis generates requests from the app's own OpenAPI (bounded examples, valid and
invalid ones, in-process ASGI) and no answer is a 5xx. Half the calls carry a valid API key and admin token,
so validation and the handlers behind it are reached, not only the 401s."""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from _service_helpers import new_key, settings_for
from veil.api.app import create_app

pytestmark = pytest.mark.filterwarnings("ignore")
EXAMPLES = 30  # per operation: about 25 s of CPU for the whole API

_data = tempfile.TemporaryDirectory(prefix="veil-schemathesis-")
_app = create_app(settings_for(Path(_data.name), admin_token="admin-secret"))


async def _without_lifespan(scope, receive, send):
    """The app for schemathesis, which runs an ASGI app's lifespan around every call: here it runs once, for
    the module (the fixture below), as it does in a real server."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await _app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan)


@pytest.fixture(scope="module", autouse=True)
def _running():
    with TestClient(_app):
        _app.state.key = new_key(_app.state.service, credits=10)
        yield
    _data.cleanup()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case) -> None:
    if zlib.crc32(repr((case.body, case.query, case.path_parameters)).encode()) % 2 == 0:
        case.headers = {**(case.headers or {}), "access_token": _app.state.key,
                        "Authorization": "Bearer admin-secret"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.path_parameters, case.query, case.body,
                                        response.text[:500])
