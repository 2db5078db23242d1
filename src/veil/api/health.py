"""Operations endpoints of `veil serve`: `/healthz` (the process answers), `/readyz` (the parts a request needs
answer: database, store, broker with VEIL_WORKER=celery, models; what `veil doctor` checks, cheaply: each
check a single round trip bounded by a few seconds), and `/metrics` (Prometheus text format, `veil.metrics`;
behind VEIL_METRICS_TOKEN as a bearer token when that is set)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from .. import doctor
from ..jobs.service import OUTPUT_CONTAINER, JobService
from ..metrics import exposition

CHECK_SECONDS = 3.0
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, store, broker and models answer",
    responses={503: {"description": "A part does not answer; `failing` names it."}},
)
def readyz(request: Request) -> JSONResponse:
    svc: JobService = request.app.state.service
    checks: dict[str, Callable[[], str]] = {"database": lambda: _database(svc), "store": lambda: _store(svc)}
    if svc.settings.worker == "celery":
        checks["broker"] = lambda: doctor.check_broker(svc.settings)
    checks["models"] = lambda: doctor.check_models(svc.settings)
    pools: dict[str, ThreadPoolExecutor] = request.app.state.readiness_pools
    futures = {
        name: pools.setdefault(name, ThreadPoolExecutor(2, thread_name_prefix=f"veil-readyz-{name}")).submit(check)
        for name, check in checks.items()
    }
    results, failing = {}, []
    deadline = time.monotonic() + CHECK_SECONDS  # the checks run at once: 3 s for all of them
    for name, future in futures.items():
        try:
            results[name] = {"ok": True, "detail": future.result(timeout=max(0.0, deadline - time.monotonic()))}
        except FutureTimeout:
            results[name] = {"ok": False, "detail": f"no answer within {CHECK_SECONDS:g} s"}
        except Exception as exc:  # noqa: BLE001 - named in the answer, never raised
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}".strip()[:300]}
        if not results[name]["ok"]:
            failing.append(name)
    body = {"status": "not ready" if failing else "ready", "failing": failing, "checks": results}
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics", summary="Prometheus metrics (docs/scaling.md: Operations)", response_class=Response)
def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token and not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        raise HTTPException(401, "send VEIL_METRICS_TOKEN as a bearer token", headers={"WWW-Authenticate": "Bearer"})
    body, content_type = exposition(request.app.state.metrics_registry)
    return Response(body, media_type=content_type)


def _database(svc: JobService) -> str:
    from sqlalchemy import text

    with svc.db() as session:
        session.execute(text("SELECT 1"))
    return "answers"


def _store(svc: JobService) -> str:
    svc.store.exists(OUTPUT_CONTAINER, "readyz-probe")
    return f"{svc.settings.storage_backend}: answers"
