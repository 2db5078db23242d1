"""Usage (chart + CSV), Deliveries and System."""

from __future__ import annotations

import csv
import io
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ...db.models import AdminUser
from ...jobs import keys, reports
from ...storage.base import attachment_disposition
from . import security
from .params import DELIVERIES_PAGE_SIZE as PAGE_SIZE
from .params import USAGE_PERIODS, DeliveriesQuery, UsageQuery
from .render import render

router = APIRouter()


def _usage(request: Request, q: UsageQuery) -> list[reports.UsageDay]:
    return reports.usage_by_day(request.app.state.service.db, q.period, q.key or None)


@router.get("/usage")
def usage_page(request: Request, q: Annotated[UsageQuery, Query()], admin: AdminUser = Depends(security.admin_only)):
    rows = _usage(request, q)
    chart = {
        "days": [r.day.isoformat() for r in rows],
        "credits": [r.credits for r in rows],
        "files": [r.files for r in rows],
        "minutes": [r.video_minutes for r in rows],
    }
    totals = {
        "credits": sum(r.credits for r in rows),
        "files": sum(r.files for r in rows),
        "minutes": round(sum(r.video_minutes for r in rows), 1),
    }
    return render(
        request,
        "usage.html",
        active="usage",
        rows=rows,
        chart=chart,
        totals=totals,
        key=q.key,
        days=q.period,
        periods=USAGE_PERIODS,
        keys=keys.list_keys(request.app.state.service.db),
    )


@router.get("/usage.csv")
def usage_csv(
    request: Request, q: Annotated[UsageQuery, Query()], admin: AdminUser = Depends(security.admin_only)
) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "credits_spent", "files_anonymized", "video_minutes"])
    for row in _usage(request, q):
        writer.writerow([row.day.isoformat(), row.credits, row.files, row.video_minutes])
    name = f"veil-usage-{q.key[:8] or 'all'}-{q.period}d.csv"
    return Response(
        out.getvalue(), media_type="text/csv", headers={"Content-Disposition": attachment_disposition(name)}
    )


@router.get("/deliveries")
def deliveries_page(
    request: Request, q: Annotated[DeliveriesQuery, Query()], admin: AdminUser = Depends(security.admin_only)
):
    db = request.app.state.service.db
    status, key, page = q.status if q.status in reports.DELIVERY_STATES else "", q.key, q.page
    rows, total = reports.find_deliveries(db, status or None, key or None, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    filters = urlencode({k: v for k, v in {"status": status, "key": key}.items() if v})
    return render(
        request,
        "deliveries.html",
        active="deliveries",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        status=status,
        key=key,
        states=reports.DELIVERY_STATES,
        key_names={k.id: k.name for k in keys.list_keys(db)},
        filters=filters,
    )


@router.get("/system")
def system_page(request: Request, admin: AdminUser = Depends(security.admin_only)):
    svc = request.app.state.service
    return render(request, "system.html", active="system", info=reports.system_info(svc.settings, svc.db, svc.store))
