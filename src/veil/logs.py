"""Logging for the service commands (`veil serve`, `veil worker`, `veil events`): every line names the
job it is about (`[job <id>]`, `-` outside a job), and the Azure SDK's and HTTP clients' per-request
logging stays off unless VEIL_LOG_HTTP is set."""

from __future__ import annotations

import contextvars
import logging

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="-")
FORMAT = "%(asctime)s %(levelname)s %(processName)s [job %(job)s] %(name)s: %(message)s"
HTTP_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "uamqp", "kombu", "amqp")
QUIET_LOGGERS = ("alembic.runtime.plugins",)


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job.get()
        return True


def configure(log_http: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_JobFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if log_http else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
