"""Logging for the service commands (`veil serve`, `veil worker`, `veil events`): every line names the
job it is about (`[job <id>]`, `-` outside a job), secrets in URLs (the webhook's `secret=`, a SAS's `sig=`)
are redacted from every line, the access log's and tracebacks included, and the Azure SDK's and HTTP
clients' per-request logging stays off unless VEIL_LOG_HTTP is set. With VEIL_LOG_FORMAT=json every record is
one JSON object on a line (python-json-logger): time, level, logger, process, message, `job_id` and `key_id`
(null outside a job or a request with a key), exc_info; redacted alike."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="-")
_current_key: contextvars.ContextVar[list[str | None] | None] = contextvars.ContextVar("current_key", default=None)
FORMAT = "%(asctime)s %(levelname)s %(processName)s [job %(job)s] %(name)s: %(message)s"
JSON_FIELDS = ["asctime", "levelname", "processName", "name", "message", "job_id", "key_id"]
HTTP_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "uamqp", "kombu", "amqp")
QUIET_LOGGERS = ("alembic.runtime.plugins",)
_SECRET_VALUES = re.compile(r"(?i)\b(secret|sig)=[^&\s\"'#<>]+")  # query parameters, however quoted around


def bind_key(key_id: str | None = None) -> contextvars.Token:
    """Log lines from here on (until `unbind_key(token)`) name `key_id` (a job's key), or the key
    `name_key` names later (a request's: its handlers run in threads with copies of this context, and the
    cell they fill is shared with it)."""
    return _current_key.set([key_id])


@contextlib.contextmanager
def key_scope(key_id: str | None = None) -> Iterator[None]:
    """`bind_key` for the lines logged within."""
    token = bind_key(key_id)
    try:
        yield
    finally:
        unbind_key(token)


def unbind_key(token: contextvars.Token) -> None:
    _current_key.reset(token)


def name_key(key_id: str) -> None:
    """The API key of the request (or job) in progress, for its log lines from here on."""
    cell = _current_key.get()
    if cell is not None:
        cell[0] = key_id


def redact(text: str) -> str:
    """`text` with the values of `secret=` and `sig=` (a SAS signature) replaced by `REDACTED`."""
    return _SECRET_VALUES.sub(r"\1=REDACTED", text)


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job.get()
        record.job_id = None if record.job == "-" else record.job
        cell = _current_key.get()
        record.key_id = cell[0] if cell else None
        return True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class _RedactingJson(JsonFormatter):
        def process_log_record(self, log_data: dict) -> dict:  # before encoding: the JSON stays valid
            return {k: redact(v) if isinstance(v, str) else v for k, v in log_data.items()}

    return _RedactingJson(
        JSON_FIELDS,
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "processName": "process"},
        reserved_attrs=[*RESERVED_ATTRS, "job", "color_message"],
    )


def configure(log_http: bool = False, level: int = logging.INFO, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_JobFilter())
    handler.setFormatter(_json_formatter() if log_format == "json" else _RedactingFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if log_http else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
