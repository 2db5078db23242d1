"""The panel's query parameters, validated and bounded as the public API's are (`schemas.BIGINT_MAX`): a page
number whose offset leaves BIGINT, a day past 9999-12-30 (the filter's end is the next midnight), a key id
that is not one, or text over its length is a 422 page naming the parameter, never a 500."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..schemas import BIGINT_MAX, validation_detail
from .render import render

JOBS_PAGE_SIZE = 25
DELIVERIES_PAGE_SIZE = 50
LAST_DAY = date.max - timedelta(days=1)
USAGE_PERIODS = (7, 30, 90, 365)


def _blank_is_none(value):
    return None if value == "" else value  # an empty date field of the filter form


KeyId = Annotated[str, Field(max_length=36, pattern=r"^[0-9A-Za-z-]*$", description="An API key's id")]
Choice = Annotated[str, Field(max_length=40, description="One of the listed values; others show everything")]
Day = Annotated[
    Annotated[date, Field(le=LAST_DAY)] | None, BeforeValidator(_blank_is_none), Field(description="YYYY-MM-DD (UTC)")
]


def _page(size: int):
    return Field(1, ge=1, le=BIGINT_MAX // size, description="Page number, from 1")


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobsQuery(_Query):
    queue: Choice = ""  # "review": the jobs awaiting review, oldest first
    key: KeyId = ""
    status: Choice = ""
    kind: Choice = ""
    since: Day = None
    until: Day = None
    page: int = _page(JOBS_PAGE_SIZE)


class DeliveriesQuery(_Query):
    status: Choice = ""
    key: KeyId = ""
    page: int = _page(DELIVERIES_PAGE_SIZE)


class UsageQuery(_Query):
    key: KeyId = ""
    days: int = Field(30, ge=1, le=3660, description="7, 30, 90 or 365; others show 30")

    @property
    def period(self) -> int:
        return self.days if self.days in USAGE_PERIODS else 30


def is_panel_page(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/admin/") and not path.startswith("/admin/api/")


def invalid_page(request: Request, exc: RequestValidationError):
    """The 422 page for a panel address with a parameter out of bounds (the JSON API answers JSON)."""
    problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in validation_detail(exc.errors()))
    return render(
        request,
        "message.html",
        status_code=422,
        title="Invalid address",
        message=f"This page cannot be shown with these parameters ({problems}).",
    )
