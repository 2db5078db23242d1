"""Logging for the service commands (`veil serve`, `veil worker`, `veil events`): every line names the
job it is about (`[job <id>]`, `-` outside a job), secrets in URLs (the webhook's `secret=`, a SAS's `sig=`)
are redacted from every line, the access log's and tracebacks included, and the Azure SDK's and HTTP
clients' per-request logging stays off unless VEIL_LOG_HTTP is set."""

from __future__ import annotations

import contextvars
import logging
import re

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="-")
FORMAT = "%(asctime)s %(levelname)s %(processName)s [job %(job)s] %(name)s: %(message)s"
HTTP_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "uamqp", "kombu", "amqp")
QUIET_LOGGERS = ("alembic.runtime.plugins",)
_SECRET_VALUES = re.compile(r"(?i)\b(secret|sig)=[^&\s\"'#<>]+")  # query parameters, however quoted around


def redact(text: str) -> str:
    """`text` with the values of `secret=` and `sig=` (a SAS signature) replaced by `REDACTED`."""
    return _SECRET_VALUES.sub(r"\1=REDACTED", text)


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job.get()
        return True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(log_http: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_JobFilter())
    handler.setFormatter(_RedactingFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if log_http else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
