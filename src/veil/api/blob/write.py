"""The embedded endpoint's writes: Put Block, Put Block List, Put Blob (notes §1.1-1.3) and Delete Blob."""

from __future__ import annotations

import base64
import binascii
import hashlib
import xml.etree.ElementTree as ET
from email.utils import formatdate

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from veil.storage.local import (
    BlobExistsError,
    BlobProperties,
    BlobTooLargeError,
    ConditionNotMetError,
    InvalidBlockListError,
)

from .errors import BlobError
from .request import BlobRequest, b64

MAX_BLOCK_ID_BYTES = 64  # decoded (notes §1.1)
MAX_BLOCK_LIST_BYTES = 8 * 1024 * 1024  # 50,000 ids of 64 bytes fit with room to spare


# --- Put Block (notes §1.1): 201; 400 InvalidQueryParameterValue / OutOfRangeInput /
# InvalidBlobOrBlock / Md5Mismatch; 411; 413. -------------------------------------------------


async def put_block(op: BlobRequest) -> Response:
    op.authorize("w")  # `c` alone cannot Put Block (§2)
    raw_id = op.request.query_params.get("blockid")
    if raw_id is None:
        raise BlobError(400, "MissingRequiredQueryParameter", QueryParameterName="blockid")
    block_id = decode_block_id(raw_id)
    await op.check_upload_rule()
    length = op.content_length(op.max_upload_bytes)
    await op.refuse_if_leased()
    staged = await run_in_threadpool(op.store.staged_blocks, op.container, op.blob)
    if any(len(other) != len(block_id) for other in staged):
        raise BlobError(400, "InvalidBlobOrBlock", "all block ids of a blob must have the same length")
    pending = sum(size for other, size in staged.items() if other != block_id)
    if pending + length > op.max_upload_bytes:
        raise BlobError(
            413,
            "RequestBodyTooLarge",
            f"the staged blocks would exceed {op.max_upload_bytes} bytes",
            MaxLimit=str(op.max_upload_bytes),
        )
    expected_md5 = op.content_md5()
    temp = op.store.new_temp(op.container, op.blob)
    try:
        async with op.upload_slot():
            _, md5 = await op.receive_to(temp, length, want_md5=expected_md5 is not None)
        if expected_md5 is not None and md5 != expected_md5:
            raise BlobError(400, "Md5Mismatch", UserSpecifiedMd5=b64(expected_md5), ServerCalculatedMd5=b64(md5))
        await run_in_threadpool(op.store.stage_block, op.container, op.blob, block_id, temp)
    finally:
        temp.unlink(missing_ok=True)
    headers = {"x-ms-request-server-encrypted": "false"}
    if expected_md5 is not None:
        headers["Content-MD5"] = b64(expected_md5)
    return Response(status_code=201, headers=headers)


def decode_block_id(raw: str) -> bytes:
    """Block ids in either Base64 alphabet: the seed's client sends URL-safe ids, which real
    Azure rejects from block 248 on (notes §1.1, pitfall 4); we accept both. A `+` that arrived
    unencoded was decoded to a space by the query parser (pitfall 11)."""
    text = raw.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    try:
        if len(text) % 4:
            raise binascii.Error("bad length")
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise BlobError(
            400,
            "InvalidQueryParameterValue",
            QueryParameterName="blockid",
            QueryParameterValue=raw,
            Reason="Not a valid base64 string.",
        ) from None
    if not decoded:
        raise BlobError(
            400,
            "InvalidQueryParameterValue",
            QueryParameterName="blockid",
            QueryParameterValue=raw,
            Reason="Block id must not be empty.",
        )
    if len(decoded) > MAX_BLOCK_ID_BYTES:
        raise BlobError(400, "OutOfRangeInput", "Block ID length cannot exceed 64.")
    return decoded


# --- Put Block List (notes §1.2): 201; 400 InvalidXmlDocument / InvalidBlockList;
# 409 BlobAlreadyExists on If-None-Match: *; 412 on If-Match. ---------------------------------


async def put_block_list(op: BlobRequest) -> Response:
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
                op.container,
                op.blob,
                blocks,
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
        raise BlobError(
            413,
            "RequestBodyTooLarge",
            f"{exc} (the upload's declared file_size, or the server's upload limit)",
            MaxLimit=str(op.max_upload_bytes),
        ) from None
    except BlobExistsError:
        raise BlobError(409, "BlobAlreadyExists") from None
    except ConditionNotMetError:
        raise BlobError(412, "ConditionNotMet") from None
    await op.committed(props)
    headers = commit_headers(props)
    if expected_md5 is not None:
        headers["Content-MD5"] = b64(expected_md5)
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
            blocks.append((element.tag, decode_block_id(element.text or "")))
        except BlobError:
            raise BlobError(400, "InvalidBlockList", f"invalid block id {element.text!r}") from None
    return blocks


# --- Put Blob (notes §1.3): 201; 400 MissingRequiredHeader x-ms-blob-type; 409; 411; 413. -------


async def put_blob(op: BlobRequest) -> Response:
    op.authorize("cw")  # `c` creates; overwriting needs `w` (§2)
    blob_type = op.header("x-ms-blob-type")
    if blob_type is None:
        raise BlobError(400, "MissingRequiredHeader", HeaderName="x-ms-blob-type")
    if blob_type != "BlockBlob":
        raise BlobError(
            400, "InvalidHeaderValue", "only BlockBlob is supported", HeaderName="x-ms-blob-type", HeaderValue=blob_type
        )
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
            raise BlobError(400, "Md5Mismatch", UserSpecifiedMd5=b64(expected_md5), ServerCalculatedMd5=b64(md5))
        props = await run_in_threadpool(
            lambda: op.store.commit_file(
                op.container,
                op.blob,
                temp,
                content_md5=b64(md5),
                headers=headers,
                if_none_match_any=op.if_none_match_any(),
                if_match=op.header("if-match"),
            )
        )
    except BlobExistsError:
        raise BlobError(409, "BlobAlreadyExists") from None
    except ConditionNotMetError:
        raise BlobError(412, "ConditionNotMet") from None
    finally:
        temp.unlink(missing_ok=True)
    await op.committed(props)
    return Response(status_code=201, headers=commit_headers(props))


# --- Delete Blob: 202; 404 BlobNotFound. ---------------------------------------------------------


async def delete_blob(op: BlobRequest) -> Response:
    op.authorize("d")
    await op.refuse_if_leased()
    if not await run_in_threadpool(op.store.delete, op.container, op.blob):
        raise BlobError(404, "BlobNotFound")
    return Response(status_code=202, headers={"x-ms-delete-type-permanent": "true"})


# --- shared pieces --------------------------------------------------------------------------


def commit_headers(props: BlobProperties) -> dict[str, str]:
    headers = {
        "ETag": props.etag,
        "Last-Modified": formatdate(props.modified, usegmt=True),
        "x-ms-request-server-encrypted": "false",
    }
    if props.content_md5:
        headers["Content-MD5"] = props.content_md5
    return headers
