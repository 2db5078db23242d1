"""Service logging (`veil serve`/`worker`/`events`): every line names its job, and the Azure SDK's and
HTTP clients' per-request logging is off unless VEIL_LOG_HTTP is set."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from _live_server import veil_server
from veil import logs


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logs.HTTP_LOGGERS + logs.QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def test_lines_name_the_job_and_sdk_request_logging_is_off(restore_logging, capsys):
    logs.configure(log_http=False)
    token = logs.current_job.set("8c1f0a4e-0000-4000-8000-000000000001")
    try:
        logging.getLogger("veil.engine").info("decoding")
    finally:
        logs.current_job.reset(token)
    logging.getLogger("veil.api").info("outside a job")
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request URL: ...")
    err = capsys.readouterr().err
    assert "[job 8c1f0a4e-0000-4000-8000-000000000001] veil.engine: decoding" in err
    assert "[job -] veil.api: outside a job" in err
    assert "Request URL" not in err


def test_log_http_turns_sdk_request_logging_on(restore_logging, capsys):
    logs.configure(log_http=True)
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request URL: ...")
    assert "Request URL" in capsys.readouterr().err


def test_redact_hides_webhook_secrets_and_sas_signatures():
    line = (
        '127.0.0.1:5 - "POST /events/blob-created?secret=hook-s3cret HTTP/1.1" 200; '
        "url='http://h/blob/uploads/a.jpg?sv=2023-11-03&sp=cw&SIG=abc%2Bdef%3D' and &sig=xyz"
    )
    assert logs.redact(line) == (
        '127.0.0.1:5 - "POST /events/blob-created?secret=REDACTED HTTP/1.1" 200; '
        "url='http://h/blob/uploads/a.jpg?sv=2023-11-03&sp=cw&SIG=REDACTED' and &sig=REDACTED"
    )
    assert logs.redact("design=3 signature=4") == "design=3 signature=4"


def test_served_log_has_no_secrets_and_one_line_per_client_error(tmp_path):
    """Issue 18 findings 7 and 9 on a real `veil serve`: the access log and every other line redact `secret=`
    and `sig=`; a request the client got wrong (they were 500s with tracebacks) logs its access line only."""
    secret, password = "hook-s3cret-value", "panel-password-1"
    env = {
        "VEIL_EVENTS_SECRET": secret,
        "VEIL_WORKER": "none",
        "VEIL_ADMIN_TOKEN": "admin-token",
        "VEIL_ADMIN_EMAIL": "ops@example.com",
        "VEIL_ADMIN_PASSWORD": password,
    }
    with veil_server(tmp_path / "data", env) as base, requests.Session() as http:
        key = http.post(
            f"{base}/admin/api/keys", headers={"Authorization": "Bearer admin-token"}, json={"credits": 10}, timeout=30
        ).json()["key"]
        uri = http.post(
            f"{base}/v1/create_upload_session",
            headers={"access_token": key},
            timeout=30,
            json={"file_name": "a.jpg", "file_size": 3},
        ).json()["session_uri"]
        assert http.put(uri, data=b"abc", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).status_code == 201
        signature = parse_qs(urlsplit(uri).query)["sig"][0]
        login = http.get(f"{base}/admin/login", timeout=30).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
        http.post(
            f"{base}/admin/login",
            timeout=60,
            data={"csrf_token": csrf, "email": "ops@example.com", "password": password},
        )
        hook = f"{base}/events/blob-created?secret={secret}"
        client_errors = {  # path and query as logged -> the request
            "/events/blob-created?secret=REDACTED": lambda: http.post(hook, data="[" * 100_000, timeout=30),
            "/admin/jobs?page=1000000000000000000000": lambda: http.get(
                f"{base}/admin/jobs?page=1000000000000000000000", timeout=30
            ),
            "/admin/jobs?until=9999-12-31": lambda: http.get(f"{base}/admin/jobs?until=9999-12-31", timeout=30),
            "/admin/usage.csv?key=%E4%B8%AD%E6%96%87%E5%AD%97": lambda: http.get(
                f"{base}/admin/usage.csv?key=中文字", timeout=30
            ),
        }
        for path, call in client_errors.items():
            assert 400 <= call().status_code < 500, path
    log = (tmp_path / "data" / "serve.log").read_text()
    assert secret not in log and signature not in log and "sig=REDACTED" in log
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    for path in client_errors:
        assert len([line for line in log.splitlines() if path in line]) == 1, (path, log[-3000:])
