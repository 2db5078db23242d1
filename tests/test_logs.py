"""Service logging (`veil serve`/`worker`/`events`): every line names its job, and the Azure SDK's and
HTTP clients' per-request logging is off unless VEIL_LOG_HTTP is set."""

from __future__ import annotations

import logging

import pytest

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
