"""One request against one blob (`BlobRequest`): SAS authorization, parsed headers, the upload rule and limits,
and the request body streamed to disk under a deadline (`timed_body`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from veil.settings import Settings
from veil.storage.local import CHUNK, BlobLeasedError, BlobProperties, LocalBlobStore
from veil.storage.sas import SasError, verify_blob_sas

from .errors import BlobError

log = logging.getLogger("veil.api.blob")

DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024**3
CONTENT_SETTINGS = {  # request header -> stored response header (Put Blob / Put Block List)
    "x-ms-blob-content-type": "Content-Type",
    "x-ms-blob-content-encoding": "Content-Encoding",
    "x-ms-blob-content-language": "Content-Language",
    "x-ms-blob-content-disposition": "Content-Disposition",
    "x-ms-blob-cache-control": "Cache-Control",
}


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on writes through upload URLs (settings `VEIL_MAX_UPLOAD_BYTES`,
    `VEIL_UPLOAD_IDLE_TIMEOUT_SECONDS`, `VEIL_UPLOAD_MIN_BYTES_PER_SECOND`,
    `VEIL_MAX_CONCURRENT_UPLOADS_PER_KEY`)."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    idle_timeout: float = 30.0  # seconds without a byte of the body: 408 OperationTimedOut
    min_rate: float = 16 * 1024  # bytes/s: a body may take idle_timeout + length / min_rate at most
    per_owner: int = 16  # Put Block / Put Blob bodies in flight per owner (API key, else blob): 503 ServerBusy

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(
            max_bytes=settings.max_upload_bytes,
            idle_timeout=settings.upload_idle_timeout_seconds,
            min_rate=settings.upload_min_bytes_per_second,
            per_owner=settings.max_concurrent_uploads_per_key,
        )


class BodyTooSlow(Exception):
    """A request body stalled or trickled past its deadline (`timed_body`)."""


async def timed_body(request: Request, length: int, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; raises BodyTooSlow when the client sends nothing for
    `limits.idle_timeout` seconds or is slower than `limits.min_rate` overall, so a stalled upload
    never holds its connection (and temp file) for long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.idle_timeout + length / limits.min_rate
    chunks = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(max(min(limits.idle_timeout, deadline - loop.time()), 0)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTooSlow() from None
        yield chunk


class BlobRequest:
    """One request against one blob: authentication, parsed headers, and the store."""

    def __init__(
        self,
        store: LocalBlobStore,
        request: Request,
        account: str,
        container: str,
        blob: str,
        on_blob_created: Callable[[str, str, int], None] | None,
        limits: UploadLimits,
        upload_rule: Callable[[str, str], tuple[str | None, int | None]] | None,
        in_flight: dict[str, int],
    ) -> None:
        self.store = store
        self.request = request
        self.account = account
        self.container = container
        self.blob = blob
        self.on_blob_created = on_blob_created
        self.limits = limits
        self.upload_rule = upload_rule
        self.in_flight = in_flight
        self.owner = f"{container}/{blob}"
        self.max_upload_bytes = limits.max_bytes
        self.overrides: dict[str, str] = {}
        self.permission = ""
        try:
            store.blob_url(container, blob)  # validates the names
        except ValueError as exc:
            raise BlobError(400, "InvalidResourceName", str(exc)) from None

    def authorize(self, allowed: str) -> None:
        """Service SAS check (notes §2): 403 AuthenticationFailed / AuthorizationPermissionMismatch."""
        client = self.request.client
        grant = verify_blob_sas(
            self.request.query_params,
            account=self.account,
            key=self.store.key,
            container=self.container,
            blob=self.blob,
            allowed=allowed,
            scheme=self.request.url.scheme,
            client_ip=client.host if client else None,
        )
        if self.account != self.store.account:  # a SAS signed for another account name cannot verify
            raise SasError("AuthenticationFailed", f"unknown account {self.account}")
        self.overrides = grant.overrides
        self.permission = grant.permission

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    async def check_upload_rule(self) -> None:
        """The owner and size bound of this blob (after `authorize`): a job's declared file_size."""
        if self.upload_rule is None:
            return
        owner, most = await run_in_threadpool(self.upload_rule, self.container, self.blob)
        self.owner = owner or self.owner
        if most is not None:
            self.max_upload_bytes = min(most, self.limits.max_bytes)

    @asynccontextmanager
    async def upload_slot(self) -> AsyncIterator[None]:
        """One of the owner's `limits.per_owner` concurrent upload bodies, or 503 ServerBusy."""
        if self.in_flight.get(self.owner, 0) >= self.limits.per_owner:
            raise BlobError(
                503,
                "ServerBusy",
                f"more than {self.limits.per_owner} uploads at once for this API key; retry when one has finished",
            )
        self.in_flight[self.owner] = self.in_flight.get(self.owner, 0) + 1
        try:
            yield
        finally:
            self.in_flight[self.owner] -= 1
            if not self.in_flight[self.owner]:
                del self.in_flight[self.owner]

    def body(self, length: int) -> AsyncIterator[bytes]:
        return timed_body(self.request, length, self.limits)

    async def refuse_if_leased(self) -> None:
        """412 LeaseIdMissing for a frozen blob (a committed job input), decided before the body is
        read; the store checks again at commit time."""
        if await run_in_threadpool(self.store.frozen, self.container, self.blob):
            raise BlobLeasedError(self.blob)

    def content_length(self, limit: int) -> int:
        """Content-Length, required (411) and bounded (413) before any byte of the body is read."""
        if "chunked" in (self.header("transfer-encoding") or "").lower() or self.header("content-length") is None:
            raise BlobError(411, "MissingContentLengthHeader")
        try:
            length = int(self.header("content-length") or "")
        except ValueError:
            raise BlobError(
                400, "InvalidHeaderValue", HeaderName="Content-Length", HeaderValue=self.header("content-length") or ""
            ) from None
        if length < 0:
            raise BlobError(400, "InvalidHeaderValue", HeaderName="Content-Length", HeaderValue=str(length))
        if length > limit:
            raise BlobError(
                413, "RequestBodyTooLarge", f"{length} bytes is over the {limit} limit", MaxLimit=str(limit)
            )
        return length

    def content_md5(self) -> bytes | None:
        value = self.header("content-md5")
        if value is None:
            return None
        try:
            digest = base64.b64decode(value, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) != 16:
            raise BlobError(400, "InvalidHeaderValue", HeaderName="Content-MD5", HeaderValue=value)
        return digest

    def content_settings(self) -> dict[str, str]:
        return {stored: value for header, stored in CONTENT_SETTINGS.items() if (value := self.header(header))}

    def if_none_match_any(self) -> bool:
        return (self.header("if-none-match") or "").strip() == "*"

    async def receive_to(self, dest: Path, length: int, want_md5: bool) -> tuple[int, bytes | None]:
        """Stream the request body to `dest` (writes and hashing in a worker thread, 1 MiB at a
        time, so neither the event loop nor memory sees the whole body)."""
        digest = hashlib.md5() if want_md5 else None
        size = 0
        buffer = bytearray()
        out = open(dest, "wb")
        try:
            async for chunk in self.body(length):
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= CHUNK:
                    await run_in_threadpool(_write_chunk, out, digest, buffer)
                    buffer = bytearray()
            if buffer:
                await run_in_threadpool(_write_chunk, out, digest, buffer)
        finally:
            out.close()
        return size, digest.digest() if digest else None

    async def read_small(self, limit: int) -> bytes:
        length = self.content_length(limit)
        body = bytearray()
        async for chunk in self.body(length):
            body += chunk
            if len(body) > length:
                break
        return bytes(body)

    async def committed(self, props: BlobProperties) -> None:
        """The embedded BlobCreated event (notes §3, §5): after Put Blob and Put Block List."""
        if self.on_blob_created is None:
            return
        try:
            await run_in_threadpool(self.on_blob_created, self.container, self.blob, props.size)
        except Exception:
            log.exception("on_blob_created failed for %s/%s", self.container, self.blob)


def _write_chunk(out: BinaryIO, digest: hashlib._Hash | None, data: bytearray) -> None:
    if digest is not None:
        digest.update(data)
    out.write(data)


def b64(data: bytes | None) -> str:
    return base64.b64encode(data or b"").decode()
