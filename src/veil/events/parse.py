"""Blob Created events, Event Grid schema or CloudEvents 1.0 (notes §3.1-3.3), single or in an array.

Everything in a delivery is checked before it is used: JSON nested deeper than MAX_DEPTH, fields of the
wrong type, text that is not valid Unicode and sizes outside the database's BIGINT are an EventError (the
webhook's 400, the consumer's dead letter), never an exception of the parser or the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
# Only these mean "a blob is completely committed" (notes §7.21); CreateFile fires for an empty HNS file first.
COMMITTED_APIS = frozenset({"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"})
_SUBJECT = ("blobServices", "default", "containers")
MAX_DEPTH = 16  # an Event Grid or CloudEvents delivery nests 4 deep
MAX_SIZE = 2**63 - 1  # the database's BIGINT, where a job's upload size is kept


class EventError(ValueError):
    """The payload is not an event this service understands; the message says what is wrong."""


@dataclass(frozen=True)
class BlobCreated:
    container: str
    blob: str
    size: int
    etag: str | None
    event_id: str | None


def events_in(body: bytes | str | Any) -> list[dict]:
    """The events of a delivery: a JSON object (Service Bus: one per message) or an array (webhooks)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventError(f"body is not JSON: {exc}") from None
        except RecursionError:  # the C parser stops at the interpreter's recursion limit
            raise EventError(f"body is nested more than {MAX_DEPTH} deep") from None
    _check_depth(body)
    events = body if isinstance(body, list) else [body]
    if not events or not all(isinstance(e, dict) for e in events):
        raise EventError("expected an event object or a non-empty array of event objects")
    return events


def _check_depth(body: Any) -> None:
    """EventError when arrays and objects nest more than MAX_DEPTH deep (walked without recursion)."""
    level, depth = [body], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise EventError(f"body is nested more than {MAX_DEPTH} deep")
        level = [
            child
            for node in level
            if isinstance(node, (list, dict))
            for child in (node.values() if isinstance(node, dict) else node)
        ]


def _text(value: Any) -> str | None:
    """`value` when it is text that can be stored (valid UTF-8: JSON may carry lone surrogates), else None."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def event_type(event: dict) -> str:
    kind = event.get("eventType", event.get("type"))  # Event Grid schema / CloudEvents
    if not isinstance(kind, str) or not kind:
        raise EventError("event has no eventType (Event Grid) or type (CloudEvents)")
    return kind


def validation_code(event: dict) -> str | None:
    """The code of an Event Grid SubscriptionValidationEvent (notes §3.5), None for other events."""
    if event_type(event) != VALIDATION:
        return None
    data = event.get("data")
    code = data.get("validationCode") if isinstance(data, dict) else None
    if not _text(code):
        raise EventError("validation event without data.validationCode")
    return code


def blob_created(event: dict) -> BlobCreated | None:
    """The committed blob an event announces; None for events that announce no committed blob."""
    if event_type(event) != BLOB_CREATED:
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        raise EventError("BlobCreated event without a data object")
    if _text(data.get("api")) not in COMMITTED_APIS:
        return None
    subject = event.get("subject")
    parts = subject.strip("/").split("/", 5) if _text(subject) else []
    if len(parts) != 6 or tuple(parts[:3]) != _SUBJECT or parts[4] != "blobs" or not parts[3] or not parts[5]:
        raise EventError(f"subject is not /blobServices/default/containers/<container>/blobs/<name>: {subject!r:.200}")
    size = data.get("contentLength")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise EventError(f"data.contentLength is not a byte count: {size!r:.100}")
    etag = data.get("eTag")
    return BlobCreated(
        container=parts[3],
        blob=parts[5],
        size=size,
        etag=etag.strip('"') if _text(etag) else None,
        event_id=_text(event.get("id")),
    )


def blobs_created(body: bytes | str | Any) -> list[BlobCreated]:
    """Every committed blob in a delivery; EventError when any event in it cannot be read."""
    return [found for event in events_in(body) if (found := blob_created(event)) is not None]
