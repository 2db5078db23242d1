"""Blob Created events, Event Grid schema or CloudEvents 1.0 (notes §3.1-3.3), single or in an array."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
# Only these mean "a blob is completely committed" (notes §7.21); CreateFile fires for an empty HNS file first.
COMMITTED_APIS = frozenset({"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"})
_SUBJECT = ("blobServices", "default", "containers")


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
    events = body if isinstance(body, list) else [body]
    if not events or not all(isinstance(e, dict) for e in events):
        raise EventError("expected an event object or a non-empty array of event objects")
    return events


def event_type(event: dict) -> str:
    kind = event.get("eventType", event.get("type"))  # Event Grid schema / CloudEvents
    if not isinstance(kind, str) or not kind:
        raise EventError("event has no eventType (Event Grid) or type (CloudEvents)")
    return kind


def validation_code(event: dict) -> str | None:
    """The code of an Event Grid SubscriptionValidationEvent (notes §3.5), None for other events."""
    if event_type(event) != VALIDATION:
        return None
    code = (event.get("data") or {}).get("validationCode")
    if not isinstance(code, str) or not code:
        raise EventError("validation event without data.validationCode")
    return code


def blob_created(event: dict) -> BlobCreated | None:
    """The committed blob an event announces; None for events that announce no committed blob."""
    if event_type(event) != BLOB_CREATED:
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        raise EventError("BlobCreated event without a data object")
    if data.get("api") not in COMMITTED_APIS:
        return None
    subject = event.get("subject")
    parts = subject.strip("/").split("/", 5) if isinstance(subject, str) else []
    if len(parts) != 6 or tuple(parts[:3]) != _SUBJECT or parts[4] != "blobs" or not parts[3] or not parts[5]:
        raise EventError(f"subject is not /blobServices/default/containers/<container>/blobs/<name>: {subject!r}")
    size = data.get("contentLength")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise EventError(f"data.contentLength is not a byte count: {size!r}")
    etag = data.get("eTag")
    return BlobCreated(container=parts[3], blob=parts[5], size=size,
                       etag=etag.strip('"') if isinstance(etag, str) and etag else None,
                       event_id=event.get("id") if isinstance(event.get("id"), str) else None)


def blobs_created(body: bytes | str | Any) -> list[BlobCreated]:
    """Every committed blob in a delivery; EventError when any event in it cannot be read."""
    return [found for event in events_in(body) if (found := blob_created(event)) is not None]
