"""`BodyLimit`: an ASGI guard that answers 413 to API requests whose body is over a limit, before the
application (and its JSON parser) sees a byte of it. Paths may have their own limit, or none (None):
the blob endpoint bounds its own bodies, `/v1/direct_upload` only forwards a Content-Length it has
checked, and Event Grid delivers batches of up to 1 MB.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, per_prefix: dict[str, int | None] | None = None) -> None:
        self.app = app
        self.default = limit
        self.per_prefix = per_prefix or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.default
        if scope["type"] == "http":
            limit = next((n for prefix, n in self.per_prefix.items() if scope["path"].startswith(prefix)), limit)
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > limit:
                await self._too_large(scope, receive, send, limit, int(length))
                return
            await self.app(scope, receive, send)  # the server holds the body to Content-Length
            return
        # No Content-Length (chunked): read up to the limit here, then hand the body on.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > limit:
                await self._too_large(scope, receive, send, limit, None)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int, length: int | None) -> None:
        size = f" ({length} bytes)" if length is not None else ""
        response = JSONResponse(
            {"detail": f"the request body{size} is over the {limit}-byte limit"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
