"""Event Grid webhook: `POST /events/blob-created?secret=<VEIL_EVENTS_SECRET>` (notes §3).

Accepts the Event Grid schema and CloudEvents 1.0, a single event or an array, and performs both
subscription handshakes: Event Grid's SubscriptionValidationEvent (answered 200 with
`{"validationResponse": code}`) and the CloudEvents webhook OPTIONS request (answered with
`WebHook-Allowed-Origin`). Every committed blob becomes `JobService.on_blob_created`; an error while
saving answers 500, so Event Grid delivers again. A delivery that cannot be read (not JSON, nested too
deep, fields of the wrong type or out of range) is a 400, which Event Grid does not retry. Disabled (403)
while no secret is configured.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..events.parse import EventError, blobs_created, events_in, validation_code
from .public import service

PATH = "/events/blob-created"
router = APIRouter(tags=["events"])


def _authorize(request: Request) -> None:
    secret = service(request).settings.events_secret
    if not secret:
        raise HTTPException(403, "the Event Grid webhook is disabled: set VEIL_EVENTS_SECRET")
    given = request.query_params.get("secret", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise HTTPException(401, "missing or wrong secret (append ?secret=<VEIL_EVENTS_SECRET> to the endpoint URL)")


@router.options(PATH)
def cloudevents_handshake(request: Request) -> Response:
    """CloudEvents webhook validation: grant the origin that asks."""
    _authorize(request)
    origin = request.headers.get("WebHook-Request-Origin")
    if not origin:
        raise HTTPException(400, "OPTIONS without a WebHook-Request-Origin header")
    return Response(
        status_code=200,
        headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST, OPTIONS"},
    )


_DOCUMENTED = {  # the body is read by veil.events.parse, so the OpenAPI (and schemathesis) learn it here
    "parameters": [
        {
            "name": "secret",
            "in": "query",
            "required": True,
            "schema": {"type": "string"},
            "description": "VEIL_EVENTS_SECRET",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"description": "An Event Grid or CloudEvents 1.0 event, or an array of them (at most 1 MB)"}
            }
        },
    },
}


@router.post(PATH, openapi_extra=_DOCUMENTED)
async def blob_created(request: Request):
    _authorize(request)
    try:
        events = events_in(await request.body())
        codes = [code for event in events if (code := validation_code(event))]
        if codes:
            return {"validationResponse": codes[0]}
        found = blobs_created(events)
    except EventError as exc:
        raise HTTPException(400, f"unreadable event: {exc}") from None
    svc = service(request)
    for blob in found:
        await run_in_threadpool(svc.on_blob_created, blob.container, blob.blob, blob.size, blob.etag)
    return {"accepted": len(found)}
