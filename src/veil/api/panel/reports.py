"""Usage (chart + CSV), Deliveries and System."""

from __future__ import annotations

import csv
import io
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ...db.models import AdminUser
from ...jobs import keys, reports
from . import security
from .render import render

router = APIRouter()
PERIODS = (7, 30, 90, 365)
PAGE_SIZE = 50


def _usage(request: Request, key: str, days: int) -> list[reports.UsageDay]:
    return reports.usage_by_day(request.app.state.service.db, days if days in PERIODS else 30, key or None)


@router.get("/usage")
def usage_page(request: Request, admin: AdminUser = Depends(security.current_admin), key: str = "",
               days: int = Query(30)):
    rows = _usage(request, key, days)
    chart = {"days": [r.day.isoformat() for r in rows], "credits": [r.credits for r in rows],
             "files": [r.files for r in rows], "minutes": [r.video_minutes for r in rows]}
    totals = {"credits": sum(r.credits for r in rows), "files": sum(r.files for r in rows),
              "minutes": round(sum(r.video_minutes for r in rows), 1)}
    return render(request, "usage.html", active="usage", rows=rows, chart=chart, totals=totals, key=key,
                  days=days if days in PERIODS else 30, periods=PERIODS,
                  keys=keys.list_keys(request.app.state.service.db))


@router.get("/usage.csv")
def usage_csv(request: Request, admin: AdminUser = Depends(security.current_admin), key: str = "",
              days: int = Query(30)) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "credits_spent", "files_anonymized", "video_minutes"])
    for row in _usage(request, key, days):
        writer.writerow([row.day.isoformat(), row.credits, row.files, row.video_minutes])
    name = f"veil-usage-{key[:8] or 'all'}-{days}d.csv"
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/deliveries")
def deliveries_page(request: Request, admin: AdminUser = Depends(security.current_admin), status: str = "",
                    key: str = "", page: int = Query(1, ge=1)):
    db = request.app.state.service.db
    status = status if status in reports.DELIVERY_STATES else ""
    rows, total = reports.find_deliveries(db, status or None, key or None, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    filters = urlencode({k: v for k, v in {"status": status, "key": key}.items() if v})
    return render(request, "deliveries.html", active="deliveries", rows=rows, total=total, page=page,
                  pages=max(1, -(-total // PAGE_SIZE)), status=status, key=key, states=reports.DELIVERY_STATES,
                  key_names={k.id: k.name for k in keys.list_keys(db)}, filters=filters)


@router.get("/system")
def system_page(request: Request, admin: AdminUser = Depends(security.current_admin)):
    svc = request.app.state.service
    return render(request, "system.html", active="system",
                  info=reports.system_info(svc.settings, svc.db, svc.store))
