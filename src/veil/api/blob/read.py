"""The embedded endpoint's reads: Get Blob with ranges (notes §1.4), Get Blob Properties (§1.5) and Get Block
List."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from email.utils import formatdate
from typing import BinaryIO

from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from veil.storage.base import BlobNotFoundError
from veil.storage.local import CHUNK, BlobProperties

from .errors import BlobError
from .request import BlobRequest, b64

MAX_RANGE_MD5_BYTES = 4 * 1024 * 1024  # x-ms-range-get-content-md5 limit (notes §1.7)
_RANGE_RE = re.compile(r"^\s*bytes=(\d*)-(\d*)\s*$")


# --- Get Blob (notes §1.4): 200 / 206 + Content-Range, `x-ms-range` over `Range`; 416 InvalidRange
# (start ≥ size, so any range on an empty blob); 412 on If-Match; rsc* overrides. -----------------


async def get_blob(op: BlobRequest) -> Response:
    op.authorize("r")
    props, stream = await run_in_threadpool(open_blob, op)
    try:
        headers = properties_headers(props, op.overrides)
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
            headers["Content-MD5"] = b64(hashlib.md5(data).digest())
            return Response(content=data, status_code=206, headers=headers)
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(_iter_file(stream, start, length), status_code=status, headers=headers, media_type=None)


def _requested_range(op: BlobRequest, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive, or None for the whole blob. `x-ms-range` wins over `Range`; a
    malformed `x-ms-range` is a 400, a malformed `Range` is ignored (RFC 9110)."""
    for name in ("x-ms-range", "range"):
        value = op.header(name)
        if value is None:
            continue
        match = _RANGE_RE.match(value)
        first, last = (match.group(1), match.group(2)) if match else ("", "")
        if (
            not match
            or (not first and not last)
            or (first and last and int(first) > int(last))
            or (name == "x-ms-range" and not first)
        ):
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


def open_blob(op: BlobRequest) -> tuple[BlobProperties, BinaryIO]:
    try:
        return op.store.open_blob(op.container, op.blob)
    except BlobNotFoundError:
        code = "BlobNotFound" if op.store.container_exists(op.container) else "ContainerNotFound"
        raise BlobError(404, code) from None


# --- Get Blob Properties (notes §1.5): HEAD, 200 + Content-Length; 404 without body but with
# x-ms-error-code. -----------------------------------------------------------------------------


async def get_blob_properties(op: BlobRequest) -> Response:
    op.authorize("r")
    props, stream = await run_in_threadpool(open_blob, op)
    stream.close()
    headers = properties_headers(props, op.overrides)
    headers["Content-Length"] = str(props.size)
    if props.content_md5:
        headers["Content-MD5"] = props.content_md5
    return Response(status_code=200, headers=headers)


# --- Get Block List (Azure REST "Get Block List"; notes §5): GET ?comp=blocklist[&blocklisttype=committed|
# uncommitted|all], default committed; 200 + XML, ETag and Last-Modified when a committed blob exists; 400
# InvalidQueryParameterValue; 404 when the blob has neither committed nor staged blocks. A SAS needs `r` (Azure's
# rule), except that the uncommitted list alone is also answered to `w`: an upload URL (sp=cw, scoped to its one
# blob) lists the ids and sizes of its own session's staged blocks, which its holder could overwrite anyway, so a
# client can resume; it still reads no content, and nobody else's blocks. -----------------------------------

BLOCK_LIST_TYPES = ("committed", "uncommitted", "all")


async def get_block_list(op: BlobRequest) -> Response:
    kind = op.request.query_params.get("blocklisttype", "committed").lower()
    op.authorize("rw" if kind == "uncommitted" else "r")
    if kind not in BLOCK_LIST_TYPES:
        raise BlobError(
            400,
            "InvalidQueryParameterValue",
            QueryParameterName="blocklisttype",
            QueryParameterValue=kind,
            Reason="Valid values are committed, uncommitted and all.",
        )
    try:
        props, staged = await run_in_threadpool(op.store.block_list, op.container, op.blob)
    except BlobNotFoundError:
        code = "BlobNotFound" if op.store.container_exists(op.container) else "ContainerNotFound"
        raise BlobError(404, code) from None
    lists = []
    if kind in ("committed", "all"):
        committed = [(bytes.fromhex(hex_id), size) for hex_id, size in props.blocks] if props else []
        lists.append(f"<CommittedBlocks>{_blocks_xml(committed)}</CommittedBlocks>")
    if kind in ("uncommitted", "all"):
        lists.append(f"<UncommittedBlocks>{_blocks_xml(staged)}</UncommittedBlocks>")
    body = '<?xml version="1.0" encoding="utf-8"?><BlockList>' + "".join(lists) + "</BlockList>"
    headers = {"x-ms-blob-content-length": str(props.size if props else 0)}
    if props:
        headers |= {"ETag": props.etag, "Last-Modified": formatdate(props.modified, usegmt=True)}
    return Response(content=body.encode(), status_code=200, headers=headers, media_type="application/xml")


def _blocks_xml(blocks: list[tuple[bytes, int]]) -> str:
    return "".join(f"<Block><Name>{b64(block_id)}</Name><Size>{size}</Size></Block>" for block_id, size in blocks)


def properties_headers(props: BlobProperties, overrides: dict[str, str]) -> dict[str, str]:
    headers = {
        "ETag": props.etag,
        "Last-Modified": formatdate(props.modified, usegmt=True),
        "x-ms-creation-time": formatdate(props.created, usegmt=True),
        "x-ms-blob-type": "BlockBlob",
        **(
            {"x-ms-lease-state": "leased", "x-ms-lease-status": "locked", "x-ms-lease-duration": "infinite"}
            if props.leased
            else {"x-ms-lease-state": "available", "x-ms-lease-status": "unlocked"}
        ),
        "x-ms-server-encrypted": "false",
        "Accept-Ranges": "bytes",
        **props.headers,
    }
    headers.update(overrides)  # SAS rsc* overrides (signed, §1.4)
    return headers
