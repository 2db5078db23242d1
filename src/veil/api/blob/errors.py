"""Azure error answers of the embedded blob endpoint (notes §1.6): `BlobError`, and the XML `<Error>` body with
`x-ms-error-code` that every failure gets."""

from __future__ import annotations

import errno
import logging
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from fastapi import Request
from fastapi.responses import Response

log = logging.getLogger("veil.api.blob")

MESSAGES = {
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


def unexpected_error(exc: Exception, request: Request, request_id: str, head: bool) -> Response:
    """A full disk under the store (the body was not kept) is 503 ServerBusy, which clients retry, logged in
    one line; anything else is a 500 InternalError with its traceback in the log."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.warning(
            "blob endpoint: the store is out of space (%s): %s %s", exc.strerror, request.method, request.url.path
        )
        response = error_response(
            BlobError(503, "ServerBusy", "The upload store is out of space; retry later."), request_id, head=head
        )
        response.headers["Retry-After"] = "30"
        return response
    log.exception("blob endpoint failed: %s %s", request.method, request.url.path)
    return error_response(BlobError(500, "InternalError"), request_id, head=head)


def error_response(exc: BlobError, request_id: str, head: bool = False) -> Response:
    """Azure error (notes §1.6): `x-ms-error-code`, `Content-Type: application/xml`, XML `<Error>`;
    no body for HEAD."""
    headers = {"x-ms-error-code": exc.code}
    extra = dict(exc.extra)
    if content_range := extra.pop("content_range", None):
        headers["Content-Range"] = content_range
    if head:
        return Response(status_code=exc.status, headers=headers)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    message = MESSAGES.get(exc.code, exc.code)
    if exc.detail and exc.code not in ("AuthenticationFailed",):
        message = f"{message} {exc.detail}"
    parts = [f"<Code>{exc.code}</Code>", f"<Message>{escape(message)}\nRequestId:{request_id}\nTime:{now}</Message>"]
    if exc.code == "AuthenticationFailed" and exc.detail:
        parts.append(f"<AuthenticationErrorDetail>{escape(exc.detail)}</AuthenticationErrorDetail>")
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in extra.items()]
    body = '<?xml version="1.0" encoding="utf-8"?><Error>' + "".join(parts) + "</Error>"
    return Response(content=body.encode(), status_code=exc.status, headers=headers, media_type="application/xml")
