"""The embedded Azure Blob endpoint: the block-blob subset of the Azure Blob REST protocol that the
seed's client and the `azure-storage-blob` SDK use, served from a `LocalBlobStore`.

URL layout: `<public_url>/blob/<account>/<container>/<blob>?<service SAS>` (the SDK's
`BlobClient.from_blob_url` rebuilds exactly this path for loopback and custom hosts alike,
notes pitfall 17). Every handler cites the operation it implements and the section of
`notes/azure-blob-protocol.md` it follows. Bodies stream to disk and downloads stream from disk:
memory use does not depend on blob size. Every error is an Azure XML error with
`x-ms-error-code` (§1.6) and is decided before the request body is read.

The package's modules: `errors` (Azure error answers), `request` (one request: SAS, headers, limits, the body),
`write` (Put Block, Put Block List, Put Blob, Delete Blob), `read` (Get Blob, Get Blob Properties, Get Block List).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from veil.storage.local import BLOB_PATH_PREFIX, BlobLeasedError, LocalBlobStore
from veil.storage.sas import SasError

from .errors import BlobError, error_response, unexpected_error
from .read import get_blob, get_blob_properties, get_block_list
from .request import BlobRequest, BodyTooSlow, UploadLimits, timed_body
from .write import delete_blob, put_blob, put_block, put_block_list

API_VERSION = "2026-10-06"  # what we answer in x-ms-version (the SDK's version, notes §0)


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
            op = BlobRequest(store, request, account, container, blob, on_blob_created, limits, upload_rule, in_flight)
            response = await handler(op)
        except BlobError as exc:
            response = error_response(exc, request_id, head=head)
        except SasError as exc:
            response = error_response(BlobError(403, exc.code, exc.detail), request_id, head=head)
        except BlobLeasedError:  # Azure's answer for a write to a leased blob without the lease id
            response = error_response(
                BlobError(412, "LeaseIdMissing", "the upload is committed and can no longer change"),
                request_id,
                head=head,
            )
        except BodyTooSlow:
            response = error_response(
                BlobError(408, "OperationTimedOut", "the request body arrived too slowly"), request_id
            )
        except ClientDisconnect:
            response = error_response(BlobError(400, "InvalidBlobOrBlock", "client disconnected"), request_id)
        except Exception as exc:  # a bug or a disk error: an Azure 500 (503 for a full store), never a traceback
            response = unexpected_error(exc, request, request_id, head)
        if response.status_code >= 400 and request.method == "PUT":
            # The body may be unread (errors are decided first): close instead of draining it.
            response.headers["Connection"] = "close"
        response.headers["x-ms-request-id"] = request_id
        response.headers["x-ms-version"] = API_VERSION
        if client_request_id := request.headers.get("x-ms-client-request-id"):
            response.headers["x-ms-client-request-id"] = client_request_id
        return response

    return router


def _dispatch(request: Request) -> Callable[[BlobRequest], object]:
    comp = request.query_params.get("comp")
    method = request.method
    if method == "PUT" and comp == "block":
        return put_block
    if method == "PUT" and comp == "blocklist":
        return put_block_list
    if method == "PUT" and comp is None:
        return put_blob
    if method == "GET" and comp == "blocklist":
        return get_block_list
    if method in ("GET", "HEAD") and comp is None:
        return get_blob if method == "GET" else get_blob_properties
    if method == "DELETE" and comp is None:
        return delete_blob
    if comp is not None:
        raise BlobError(
            400,
            "UnsupportedQueryParameter",
            f"comp={comp} is not supported by this endpoint",
            QueryParameterName="comp",
            QueryParameterValue=comp,
        )
    raise BlobError(405, "UnsupportedHttpVerb")


__all__ = ["API_VERSION", "BlobError", "BodyTooSlow", "UploadLimits", "create_blob_router", "timed_body"]
