"""Jinja2 templates of the panel and the helpers its pages share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from ...jobs import admins

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _seconds_between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    if seconds < 0:  # clocks of different machines
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


templates.env.filters.update(when=_when, size=_size, number=lambda n: f"{n:,}".replace(",", "\u2009"))
templates.env.globals.update(took=_seconds_between)


def render(request: Request, name: str, /, status_code: int = 200, **context):
    """Render a page with what the layout needs (the admin, the CSRF token, the version)."""
    context.setdefault("admin", getattr(request.state, "admin", None))
    if context["admin"] is not None:  # the navigation's review count
        context.setdefault("review_count", admins.awaiting_review(request.app.state.service.db))
    context.setdefault("csrf", getattr(request.state, "csrf", ""))
    context.setdefault("version", request.app.version)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response
