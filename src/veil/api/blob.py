"""The embedded Azure Blob endpoint: the block-blob subset of the Azure Blob REST protocol that the
seed's client and the `azure-storage-blob` SDK use, served from a `LocalBlobStore`.

URL layout: `<public_url>/blob/<account>/<container>/<blob>?<service SAS>` (the SDK's
`BlobClient.from_blob_url` rebuilds exactly this path for loopback and custom hosts alike,
notes pitfall 17). Every handler cites the operation it implements and the section of
`notes/azure-blob-protocol.md` it follows. Bodies stream to disk and downloads stream from disk:
memory use does not depend on blob size. Every error is an Azure XML error with
`x-ms-error-code` (§1.6) and is decided before the request body is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from veil.settings import Settings
from veil.storage.base import BlobNotFoundError
from veil.storage.local import (
    BLOB_PATH_PREFIX,
    CHUNK,
    BlobExistsError,
    BlobLeasedError,
    BlobProperties,
    BlobTooLargeError,
    ConditionNotMetError,
    InvalidBlockListError,
    LocalBlobStore,
)
from veil.storage.sas import SasError, verify_blob_sas

log = logging.getLogger(__name__)

API_VERSION = "2026-10-06"  # what we answer in x-ms-version (the SDK's version, notes §0)
DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024**3
MAX_BLOCK_ID_BYTES = 64  # decoded (notes §1.1)
MAX_BLOCK_LIST_BYTES = 8 * 1024 * 1024  # 50,000 ids of 64 bytes fit with room to spare
MAX_RANGE_MD5_BYTES = 4 * 1024 * 1024  # x-ms-range-get-content-md5 limit (notes §1.7)
_RANGE_RE = re.compile(r"^\s*bytes=(\d*)-(\d*)\s*$")
_CONTENT_SETTINGS = {  # request header -> stored response header (Put Blob / Put Block List)
    "x-ms-blob-content-type": "Content-Type",
    "x-ms-blob-content-encoding": "Content-Encoding",
    "x-ms-blob-content-language": "Content-Language",
    "x-ms-blob-content-disposition": "Content-Disposition",
    "x-ms-blob-cache-control": "Cache-Control",
}
_MESSAGES = {
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of Authorization "
    "header is formed correctly including the signature.",
    "AuthorizationPermissionMismatch": "This request is not authorized to perform this operation using this "
    "permission.",
    "AuthorizationProtocolMismatch": "This request is not authorized to perform this operation using this protocol.",
    "AuthorizationSourceIPMismatch": "This request is not authorized to perform this operation using this source IP.",
    "BlobAlreadyExists": "The specified blob already exists.",
    "BlobNotFound": "The specified blob does not exist.",
    "ConditionNotMet": "The condition specified using HTTP conditional header(s) is not met.",
    "ContainerNotFound": "The specified container does not exist.",
    "InternalError": "The server encountered an internal error. Please retry the request.",
    "InvalidBlobOrBlock": "The specified blob or block content is invalid.",
    "InvalidBlockList": "The specified block list is invalid.",
    "InvalidHeaderValue": "The value for one of the HTTP headers is not in the correct format.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the request URI is invalid.",
    "InvalidRange": "The range specified is invalid for the current size of the resource.",
    "InvalidResourceName": "The specified resource name contains invalid characters.",
    "InvalidXmlDocument": "XML specified is not syntactically valid.",
    "LeaseIdMissing": "There is currently a lease on the blob and no lease ID was specified in the request.",
    "Md5Mismatch": "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
    "MissingContentLengthHeader": "The Content-Length header was not specified.",
    "MissingRequiredHeader": "An HTTP header that's mandatory for this request is not specified.",
    "MissingRequiredQueryParameter": "A query parameter that's mandatory for this request is not specified.",
    "OperationTimedOut": "The operation could not be completed within the permitted time.",
    "OutOfRangeInput": "One of the request inputs is out of range.",
    "RequestBodyTooLarge": "The request body is too large and exceeds the maximum permissible limit.",
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "UnsupportedHttpVerb": "The resource doesn't support specified Http Verb.",
    "UnsupportedQueryParameter": "One of the query parameters specified in the request URI is not supported.",
}


class BlobError(Exception):
    """An Azure error answer: status, error code, extra XML elements (notes §1.6)."""

    def __init__(self, status: int, code: str, detail: str | None = None, **extra: str) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


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
        return cls(max_bytes=settings.max_upload_bytes, idle_timeout=settings.upload_idle_timeout_seconds,
                   min_rate=settings.upload_min_bytes_per_second, per_owner=settings.max_concurrent_uploads_per_key)


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


def create_blob_router(
    store: LocalBlobStore,
    on_blob_created: Callable[[str, str, int], None] | None = None,
    limits: UploadLimits = UploadLimits(),
    upload_rule: Callable[[str, str], tuple[str | None, int | None]] | None = None,
) -> APIRouter:
    """An APIRouter serving `store` at `/blob/<account>/<container>/<blob>`.

    `on_blob_created(container, blob, size)` runs (in a worker thread) after every commit by
    Put Blob or Put Block List: the embedded equivalent of the BlobCreated event (notes §3, §5).
    A failing callback is logged; the client still gets its 201 because the blob is committed.
    `upload_rule(container, blob)` names the blob's owner (an API key id, or None) and the most
    bytes it may hold (a job's declared file_size, or None); `limits.max_bytes` bounds every blob.
    Sizes are decided from Content-Length (and the block list) before the body is read."""
    router = APIRouter(include_in_schema=False)
    path = BLOB_PATH_PREFIX + "/{account}/{container}/{blob:path}"
    in_flight: dict[str, int] = {}  # owner -> bodies being received (the event loop is single-threaded)

    @router.api_route(path, methods=["GET", "HEAD", "PUT", "DELETE"])
    async def blob_endpoint(request: Request, account: str, container: str, blob: str) -> Response:
        request_id = str(uuid.uuid4())
        head = request.method == "HEAD"
        try:
            handler = _dispatch(request)
            op = _Operation(store, request, account, container, blob, on_blob_created, limits, upload_rule,
                            in_flight)
            response = await handler(op)
        except BlobError as exc:
            response = _error_response(exc, request_id, head=head)
        except SasError as exc:
            response = _error_response(BlobError(403, exc.code, exc.detail), request_id, head=head)
        except BlobLeasedError:  # Azure's answer for a write to a leased blob without the lease id
            response = _error_response(BlobError(412, "LeaseIdMissing", "the upload is committed and can no "
                                                 "longer change"), request_id, head=head)
        except BodyTooSlow:
            response = _error_response(BlobError(408, "OperationTimedOut", "the request body arrived too slowly"),
                                       request_id)
        except ClientDisconnect:
            response = _error_response(BlobError(400, "InvalidBlobOrBlock", "client disconnected"), request_id)
        except Exception as exc:  # a bug or a disk error: an Azure 500 (503 for a full store), never a traceback
            response = _unexpected_error(exc, request, request_id, head)
        if response.status_code >= 400 and request.method == "PUT":
            # The body may be unread (errors are decided first): close instead of draining it.
            response.headers["Connection"] = "close"
        response.headers["x-ms-request-id"] = request_id
        response.headers["x-ms-version"] = API_VERSION
        if client_request_id := request.headers.get("x-ms-client-request-id"):
            response.headers["x-ms-client-request-id"] = client_request_id
        return response

    return router


def _dispatch(request: Request) -> Callable[[_Operation], object]:
    comp = request.query_params.get("comp")
    method = request.method
    if method == "PUT" and comp == "block":
        return _put_block
    if method == "PUT" and comp == "blocklist":
        return _put_block_list
    if method == "PUT" and comp is None:
        return _put_blob
    if method in ("GET", "HEAD") and comp is None:
        return _get_blob if method == "GET" else _get_blob_properties
    if method == "DELETE" and comp is None:
        return _delete_blob
    if comp is not None:
        raise BlobError(400, "UnsupportedQueryParameter", f"comp={comp} is not supported by this endpoint",
                        QueryParameterName="comp", QueryParameterValue=comp)
    raise BlobError(405, "UnsupportedHttpVerb")


class _Operation:
    """One request against one blob: authentication, parsed headers, and the store."""

    def __init__(self, store: LocalBlobStore, request: Request, account: str, container: str, blob: str,
                 on_blob_created: Callable[[str, str, int], None] | None, limits: UploadLimits,
                 upload_rule: Callable[[str, str], tuple[str | None, int | None]] | None,
                 in_flight: dict[str, int]) -> None:
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
            raise BlobError(503, "ServerBusy", f"more than {self.limits.per_owner} uploads at once for this API "
                            "key; retry when one has finished")
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
            raise BlobError(400, "InvalidHeaderValue", HeaderName="Content-Length",
                            HeaderValue=self.header("content-length") or "") from None
        if length < 0:
            raise BlobError(400, "InvalidHeaderValue", HeaderName="Content-Length", HeaderValue=str(length))
        if length > limit:
            raise BlobError(413, "RequestBodyTooLarge", f"{length} bytes is over the {limit} limit",
                            MaxLimit=str(limit))
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
        return {stored: value for header, stored in _CONTENT_SETTINGS.items() if (value := self.header(header))}

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


# --- Put Block (notes §1.1): 201; 400 InvalidQueryParameterValue / OutOfRangeInput /
# InvalidBlobOrBlock / Md5Mismatch; 411; 413. -------------------------------------------------

async def _put_block(op: _Operation) -> Response:
    op.authorize("w")  # `c` alone cannot Put Block (§2)
    raw_id = op.request.query_params.get("blockid")
    if raw_id is None:
        raise BlobError(400, "MissingRequiredQueryParameter", QueryParameterName="blockid")
    block_id = _decode_block_id(raw_id)
    await op.check_upload_rule()
    length = op.content_length(op.max_upload_bytes)
    await op.refuse_if_leased()
    staged = await run_in_threadpool(op.store.staged_blocks, op.container, op.blob)
    if any(len(other) != len(block_id) for other in staged):
        raise BlobError(400, "InvalidBlobOrBlock", "all block ids of a blob must have the same length")
    pending = sum(size for other, size in staged.items() if other != block_id)
    if pending + length > op.max_upload_bytes:
        raise BlobError(413, "RequestBodyTooLarge", f"the staged blocks would exceed {op.max_upload_bytes} bytes",
                        MaxLimit=str(op.max_upload_bytes))
    expected_md5 = op.content_md5()
    temp = op.store.new_temp(op.container, op.blob)
    try:
        async with op.upload_slot():
            _, md5 = await op.receive_to(temp, length, want_md5=expected_md5 is not None)
        if expected_md5 is not None and md5 != expected_md5:
            raise BlobError(400, "Md5Mismatch", UserSpecifiedMd5=_b64(expected_md5), ServerCalculatedMd5=_b64(md5))
        await run_in_threadpool(op.store.stage_block, op.container, op.blob, block_id, temp)
    finally:
        temp.unlink(missing_ok=True)
    headers = {"x-ms-request-server-encrypted": "false"}
    if expected_md5 is not None:
        headers["Content-MD5"] = _b64(expected_md5)
    return Response(status_code=201, headers=headers)


def _decode_block_id(raw: str) -> bytes:
    """Block ids in either Base64 alphabet: the seed's client sends URL-safe ids, which real
    Azure rejects from block 248 on (notes §1.1, pitfall 4); we accept both. A `+` that arrived
    unencoded was decoded to a space by the query parser (pitfall 11)."""
    text = raw.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    try:
        if len(text) % 4:
            raise binascii.Error("bad length")
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise BlobError(400, "InvalidQueryParameterValue", QueryParameterName="blockid",
                        QueryParameterValue=raw, Reason="Not a valid base64 string.") from None
    if not decoded:
        raise BlobError(400, "InvalidQueryParameterValue", QueryParameterName="blockid",
                        QueryParameterValue=raw, Reason="Block id must not be empty.")
    if len(decoded) > MAX_BLOCK_ID_BYTES:
        raise BlobError(400, "OutOfRangeInput", "Block ID length cannot exceed 64.")
    return decoded


# --- Put Block List (notes §1.2): 201; 400 InvalidXmlDocument / InvalidBlockList;
# 409 BlobAlreadyExists on If-None-Match: *; 412 on If-Match. ---------------------------------

async def _put_block_list(op: _Operation) -> Response:
    op.authorize("w")
    await op.check_upload_rule()
    body = await op.read_small(MAX_BLOCK_LIST_BYTES)
    expected_md5 = op.content_md5()
    if expected_md5 is not None and hashlib.md5(body).digest() != expected_md5:
        raise BlobError(400, "Md5Mismatch")
    blocks = _parse_block_list(body)
    blob_md5 = op.header("x-ms-blob-content-md5")
    await op.refuse_if_leased()
    try:
        props = await run_in_threadpool(
            lambda: op.store.commit_block_list(
                op.container, op.blob, blocks,
                content_md5=blob_md5,  # Azure stores it only when the client sends it (§1.2)
                headers=op.content_settings(),
                if_none_match_any=op.if_none_match_any(),
                if_match=op.header("if-match"),
                max_size=op.max_upload_bytes,
            )
        )
    except InvalidBlockListError as exc:
        raise BlobError(400, "InvalidBlockList", str(exc)) from None
    except BlobTooLargeError as exc:  # e.g. one block named over and over (issue 9 finding 4)
        raise BlobError(413, "RequestBodyTooLarge", f"{exc} (the upload's declared file_size, or the server's "
                        "upload limit)", MaxLimit=str(op.max_upload_bytes)) from None
    except BlobExistsError:
        raise BlobError(409, "BlobAlreadyExists") from None
    except ConditionNotMetError:
        raise BlobError(412, "ConditionNotMet") from None
    await op.committed(props)
    headers = _commit_headers(props)
    if expected_md5 is not None:
        headers["Content-MD5"] = _b64(expected_md5)
    return Response(status_code=201, headers=headers)


def _parse_block_list(body: bytes) -> list[tuple[str, bytes]]:
    """`<BlockList><Latest|Committed|Uncommitted>id</...>...</BlockList>`, with or without an XML
    declaration (the seed's client sends none, the SDK sends one)."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BlobError(400, "InvalidXmlDocument", "DTDs are not allowed")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BlobError(400, "InvalidXmlDocument", str(exc)) from None
    if root.tag != "BlockList":
        raise BlobError(400, "InvalidXmlDocument", f"root element is <{root.tag}>, expected <BlockList>")
    blocks = []
    for element in root:
        if element.tag not in ("Latest", "Committed", "Uncommitted"):
            raise BlobError(400, "InvalidXmlDocument", f"unexpected element <{element.tag}>")
        try:
            blocks.append((element.tag, _decode_block_id(element.text or "")))
        except BlobError:
            raise BlobError(400, "InvalidBlockList", f"invalid block id {element.text!r}") from None
    return blocks


# --- Put Blob (notes §1.3): 201; 400 MissingRequiredHeader x-ms-blob-type; 409; 411; 413. -------

async def _put_blob(op: _Operation) -> Response:
    op.authorize("cw")  # `c` creates; overwriting needs `w` (§2)
    blob_type = op.header("x-ms-blob-type")
    if blob_type is None:
        raise BlobError(400, "MissingRequiredHeader", HeaderName="x-ms-blob-type")
    if blob_type != "BlockBlob":
        raise BlobError(400, "InvalidHeaderValue", "only BlockBlob is supported",
                        HeaderName="x-ms-blob-type", HeaderValue=blob_type)
    await op.check_upload_rule()
    length = op.content_length(op.max_upload_bytes)
    expected_md5 = op.content_md5()
    await op.refuse_if_leased()
    exists = await run_in_threadpool(op.store.exists, op.container, op.blob)
    if exists and op.if_none_match_any():
        raise BlobError(409, "BlobAlreadyExists")  # decided before reading the body
    if exists and "w" not in op.permission:
        raise BlobError(403, "AuthorizationPermissionMismatch")
    headers = {"Content-Type": op.header("content-type") or "application/octet-stream", **op.content_settings()}
    temp = op.store.new_temp(op.container, op.blob)
    try:
        async with op.upload_slot():
            _, md5 = await op.receive_to(temp, length, want_md5=True)
        if expected_md5 is not None and md5 != expected_md5:
            raise BlobError(400, "Md5Mismatch", UserSpecifiedMd5=_b64(expected_md5), ServerCalculatedMd5=_b64(md5))
        props = await run_in_threadpool(
            lambda: op.store.commit_file(
                op.container, op.blob, temp, content_md5=_b64(md5), headers=headers,
                if_none_match_any=op.if_none_match_any(), if_match=op.header("if-match"),
            )
        )
    except BlobExistsError:
        raise BlobError(409, "BlobAlreadyExists") from None
    except ConditionNotMetError:
        raise BlobError(412, "ConditionNotMet") from None
    finally:
        temp.unlink(missing_ok=True)
    await op.committed(props)
    return Response(status_code=201, headers=_commit_headers(props))


# --- Get Blob (notes §1.4): 200 / 206 + Content-Range, `x-ms-range` over `Range`; 416 InvalidRange
# (start ≥ size, so any range on an empty blob); 412 on If-Match; rsc* overrides. -----------------

async def _get_blob(op: _Operation) -> Response:
    op.authorize("r")
    props, stream = await run_in_threadpool(_open, op)
    try:
        headers = _properties_headers(props, op.overrides)
        if (tag := op.header("if-match")) and tag.strip() != "*" and tag.strip() != props.etag:
            raise BlobError(412, "ConditionNotMet")
        if (tag := op.header("if-none-match")) and tag.strip() in ("*", props.etag):
            stream.close()
            return Response(status_code=304, headers={"ETag": props.etag})
        span = _requested_range(op, props.size)
        if span is None:
            start, end, status = 0, props.size - 1, 200
            if props.content_md5:
                headers["Content-MD5"] = props.content_md5
        else:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{props.size}"
            if props.content_md5:
                headers["x-ms-blob-content-md5"] = props.content_md5
        length = end - start + 1
        headers["Content-Length"] = str(length)
        if span is not None and (op.header("x-ms-range-get-content-md5") or "").lower() == "true":
            if length > MAX_RANGE_MD5_BYTES:
                raise BlobError(400, "OutOfRangeInput", "x-ms-range-get-content-md5 needs a range of at most 4 MiB")
            data = await run_in_threadpool(_read_range, stream, start, length)
            stream.close()
            headers["Content-MD5"] = _b64(hashlib.md5(data).digest())
            return Response(content=data, status_code=206, headers=headers)
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(_iter_file(stream, start, length), status_code=status, headers=headers,
                             media_type=None)


def _requested_range(op: _Operation, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive, or None for the whole blob. `x-ms-range` wins over `Range`; a
    malformed `x-ms-range` is a 400, a malformed `Range` is ignored (RFC 9110)."""
    for name in ("x-ms-range", "range"):
        value = op.header(name)
        if value is None:
            continue
        match = _RANGE_RE.match(value)
        first, last = (match.group(1), match.group(2)) if match else ("", "")
        if not match or (not first and not last) or (first and last and int(first) > int(last)) \
                or (name == "x-ms-range" and not first):
            if name == "x-ms-range":
                raise BlobError(400, "InvalidHeaderValue", HeaderName="x-ms-range", HeaderValue=value)
            return None
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:  # suffix range `bytes=-N` (standard Range only)
            start, end = max(0, size - int(last)), size - 1
            if int(last) == 0:
                start = size
        if start >= size:
            raise BlobError(416, "InvalidRange", content_range=f"bytes */{size}")
        return start, end
    return None


def _iter_file(stream: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """Yields the range in 1 MiB chunks; Starlette runs this in a worker thread."""
    with stream:
        stream.seek(start)
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def _read_range(stream: BinaryIO, start: int, length: int) -> bytes:
    stream.seek(start)
    return stream.read(length)


def _open(op: _Operation) -> tuple[BlobProperties, BinaryIO]:
    try:
        return op.store.open_blob(op.container, op.blob)
    except BlobNotFoundError:
        code = "BlobNotFound" if op.store.container_exists(op.container) else "ContainerNotFound"
        raise BlobError(404, code) from None


# --- Get Blob Properties (notes §1.5): HEAD, 200 + Content-Length; 404 without body but with
# x-ms-error-code. -----------------------------------------------------------------------------

async def _get_blob_properties(op: _Operation) -> Response:
    op.authorize("r")
    props, stream = await run_in_threadpool(_open, op)
    stream.close()
    headers = _properties_headers(props, op.overrides)
    headers["Content-Length"] = str(props.size)
    if props.content_md5:
        headers["Content-MD5"] = props.content_md5
    return Response(status_code=200, headers=headers)


# --- Delete Blob: 202; 404 BlobNotFound. ---------------------------------------------------------

async def _delete_blob(op: _Operation) -> Response:
    op.authorize("d")
    await op.refuse_if_leased()
    if not await run_in_threadpool(op.store.delete, op.container, op.blob):
        raise BlobError(404, "BlobNotFound")
    return Response(status_code=202, headers={"x-ms-delete-type-permanent": "true"})


# --- shared pieces --------------------------------------------------------------------------

def _commit_headers(props: BlobProperties) -> dict[str, str]:
    headers = {
        "ETag": props.etag,
        "Last-Modified": formatdate(props.modified, usegmt=True),
        "x-ms-request-server-encrypted": "false",
    }
    if props.content_md5:
        headers["Content-MD5"] = props.content_md5
    return headers


def _properties_headers(props: BlobProperties, overrides: dict[str, str]) -> dict[str, str]:
    headers = {
        "ETag": props.etag,
        "Last-Modified": formatdate(props.modified, usegmt=True),
        "x-ms-creation-time": formatdate(props.created, usegmt=True),
        "x-ms-blob-type": "BlockBlob",
        **({"x-ms-lease-state": "leased", "x-ms-lease-status": "locked", "x-ms-lease-duration": "infinite"}
           if props.leased else {"x-ms-lease-state": "available", "x-ms-lease-status": "unlocked"}),
        "x-ms-server-encrypted": "false",
        "Accept-Ranges": "bytes",
        **props.headers,
    }
    headers.update(overrides)  # SAS rsc* overrides (signed, §1.4)
    return headers


def _unexpected_error(exc: Exception, request: Request, request_id: str, head: bool) -> Response:
    """A full disk under the store (the body was not kept) is 503 ServerBusy, which clients retry, logged in
    one line; anything else is a 500 InternalError with its traceback in the log."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.warning("blob endpoint: the store is out of space (%s): %s %s", exc.strerror, request.method,
                    request.url.path)
        response = _error_response(BlobError(503, "ServerBusy", "The upload store is out of space; retry later."),
                                   request_id, head=head)
        response.headers["Retry-After"] = "30"
        return response
    log.exception("blob endpoint failed: %s %s", request.method, request.url.path)
    return _error_response(BlobError(500, "InternalError"), request_id, head=head)


def _error_response(exc: BlobError, request_id: str, head: bool = False) -> Response:
    """Azure error (notes §1.6): `x-ms-error-code`, `Content-Type: application/xml`, XML `<Error>`;
    no body for HEAD."""
    headers = {"x-ms-error-code": exc.code}
    extra = dict(exc.extra)
    if content_range := extra.pop("content_range", None):
        headers["Content-Range"] = content_range
    if head:
        return Response(status_code=exc.status, headers=headers)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    message = _MESSAGES.get(exc.code, exc.code)
    if exc.detail and exc.code not in ("AuthenticationFailed",):
        message = f"{message} {exc.detail}"
    parts = [f"<Code>{exc.code}</Code>", f"<Message>{escape(message)}\nRequestId:{request_id}\nTime:{now}</Message>"]
    if exc.code == "AuthenticationFailed" and exc.detail:
        parts.append(f"<AuthenticationErrorDetail>{escape(exc.detail)}</AuthenticationErrorDetail>")
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in extra.items()]
    body = '<?xml version="1.0" encoding="utf-8"?><Error>' + "".join(parts) + "</Error>"
    return Response(content=body.encode(), status_code=exc.status, headers=headers, media_type="application/xml")


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data or b"").decode()
