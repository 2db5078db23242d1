"""Upload events (notes §3, §6): the Service Bus consumer, tested on the SDK's own received-message type
with only the receiver faked, and the Event Grid webhook over real HTTP with the documented payloads."""

from __future__ import annotations

import copy
import io
import json
import threading
import time
import uuid

import pytest
import requests
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus._pyamqp.message import Header, Message, Properties
from sqlalchemy.exc import OperationalError

from _service_helpers import jpeg_bytes, settings_for
from veil.api.app import create_app
from veil.events.servicebus import UNREADABLE, QueueConsumer
from veil.jobs.keys import create_key
from veil.jobs.service import INPUT_CONTAINER, build_service
from veil.storage.testing import free_port, serve_app

# The documented Event Grid schema example (notes §3.1), pointed at a job's blob by `_event`.
EVENT_GRID = {
    "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/"
    "storageAccounts/my-storage-account",
    "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
    "eventType": "Microsoft.Storage.BlobCreated",
    "eventTime": "2017-06-26T18:41:00.9584103Z",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "data": {
        "api": "PutBlockList",
        "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
        "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
        "eTag": '"0x8D4BCC2E4835CD0"',
        "contentType": "text/plain",
        "contentLength": 524288,
        "blobType": "BlockBlob",
        "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
        "sequencer": "00000000000004420000000000028963",
        "storageDiagnostics": {"batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"},
    },
    "dataVersion": "",
    "metadataVersion": "1",
}
# The documented CloudEvents 1.0 example (notes §3.2): no leading slash in subject, unquoted eTag.
CLOUD_EVENT = {
    "specversion": "1.0",
    "type": "Microsoft.Storage.BlobCreated",
    "source": "/subscriptions/{subscription-id}/resourceGroups/{resource-group}/providers/"
    "Microsoft.Storage/storageAccounts/{storage-account}",
    "id": "9aeb0fdf-c01e-0131-0922-9eb54906e209",
    "time": "2019-11-18T15:13:39.4589254Z",
    "subject": "blobServices/default/containers/{storage-container}/blobs/{new-file}",
    "data": {
        "api": "PutBlockList",
        "clientRequestId": "4c5dd7fb-2c48-4a27-bb30-5361b5de920a",
        "requestId": "9aeb0fdf-c01e-0131-0922-9eb549000000",
        "eTag": "0x8D76C39E4407333",
        "contentType": "image/png",
        "contentLength": 30699,
        "blobType": "BlockBlob",
        "url": "https://gridtesting.blob.core.windows.net/testcontainer/{new-file}",
        "sequencer": "000000000000000000000000000099240000000000c41c18",
        "storageDiagnostics": {"batchId": "681fe319-3006-00a8-0022-9e7cde000000"},
    },
}
VALIDATION = [
    {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        "subject": "",
        "data": {
            "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/"
            "myeventsub/validate?id=x&t=y&apiVersion=2018-05-01-preview&token=z",
        },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2022-10-28T04:23:35.1981776Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }
]


def _event(
    template: dict,
    blob: str,
    size: int,
    etag: str = "0x8D4BCC2E4835CD0",
    container: str = INPUT_CONTAINER,
    api: str = "PutBlockList",
) -> dict:
    event = copy.deepcopy(template)
    lead = "/" if event["subject"].startswith("/") else ""
    event["subject"] = f"{lead}blobServices/default/containers/{container}/blobs/{blob}"
    event["data"].update(contentLength=size, eTag=f'"{etag}"' if lead else etag, api=api)
    return event


@pytest.fixture()
def svc(tmp_path):
    service = build_service(settings_for(tmp_path))
    yield service
    service.close()


def _created_job(svc, data: bytes) -> str:
    """A job whose upload is committed in the store, with no event handled yet."""
    _, key = create_key(svc.db, 100)
    job = svc.create_job(key.id, "p.jpg", len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    return job.id


def _wait_priced(svc, job_id: str) -> None:
    deadline = time.monotonic() + 30  # pricing runs in the background
    while svc.get_job(job_id).status == "uploaded" and time.monotonic() < deadline:
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------- Service Bus
class FakeReceiver:
    """Only the receiver is fake: it hands out the SDK's own ServiceBusReceivedMessage objects, records
    how each was settled and, like Service Bus, delivers abandoned messages again with a higher count."""

    def __init__(self, bodies: list[bytes | str]) -> None:
        self.pending = [self.message(body) for body in bodies]
        self.settled: list[tuple[str, ServiceBusReceivedMessage, dict]] = []
        self.stop = threading.Event()

    def message(self, body: bytes | str, message_id: str | None = None, delivery_count: int = 0):
        data = body.encode() if isinstance(body, str) else body
        amqp = Message(
            data=[data],
            properties=Properties(message_id=message_id or str(uuid.uuid4())),
            header=Header(delivery_count=delivery_count),
            application_properties={b"aeg-event-type": b"Notification"},
        )
        return ServiceBusReceivedMessage(amqp, receiver=self, lock_token=uuid.uuid4())

    def __enter__(self) -> FakeReceiver:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def receive_messages(self, max_message_count: int = 1, max_wait_time: float | None = None):
        batch, self.pending = self.pending[:max_message_count], self.pending[max_message_count:]
        if not batch and not self.pending:
            self.stop.set()
        return batch

    def complete_message(self, message) -> None:
        self.settled.append(("complete", message, {}))

    def dead_letter_message(self, message, reason=None, error_description=None) -> None:
        self.settled.append(("dead-letter", message, {"reason": reason, "error_description": error_description}))

    def abandon_message(self, message) -> None:
        self.settled.append(("abandon", message, {}))
        again = self.message(b"".join(message.body), message.message_id, message.delivery_count + 1)
        self.pending.append(again)


def test_consumer_marks_the_upload_then_completes_and_a_redelivery_changes_nothing(svc):
    data = jpeg_bytes()
    job_id = _created_job(svc, data)
    body = json.dumps(_event(EVENT_GRID, job_id, len(data)))  # one object per message (notes §3.4)
    receiver = FakeReceiver([body])
    consumer = QueueConsumer(svc, receiver)
    consumer.run(receiver.stop, max_wait=0)
    assert [kind for kind, _, _ in receiver.settled] == ["complete"]
    _wait_priced(svc, job_id)
    first = svc.get_job(job_id)
    assert first.status == "awaiting_approval" and first.total_cost >= 1 and first.upload_etag == "0x8D4BCC2E4835CD0"

    duplicate = receiver.message(body, receiver.settled[0][1].message_id, delivery_count=1)
    assert consumer.handle(duplicate) == "completed"
    again = svc.get_job(job_id)
    assert (again.status, again.uploaded_at, again.total_cost) == (
        "awaiting_approval",
        first.uploaded_at,
        first.total_cost,
    )


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"\xff\xfe not json", "not JSON"),
        ("[1, 2]", "event object"),
        ("{}", "eventType"),
        (json.dumps({**EVENT_GRID, "subject": "/containers/uploads"}), "subject"),
        (json.dumps({**EVENT_GRID, "data": {**EVENT_GRID["data"], "contentLength": "12"}}), "contentLength"),
    ],
)
def test_consumer_dead_letters_unreadable_messages_with_the_reason(svc, body, problem):
    receiver = FakeReceiver([body])
    QueueConsumer(svc, receiver).run(receiver.stop, max_wait=0)
    ((kind, message, how),) = receiver.settled
    assert kind == "dead-letter" and how["reason"] == UNREADABLE and problem in how["error_description"]


def test_consumer_abandons_when_the_state_cannot_be_saved_and_completes_the_redelivery(svc, monkeypatch):
    data = jpeg_bytes()
    job_id = _created_job(svc, data)
    original = svc.on_blob_created
    calls = []

    def database_down_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))
        return original(*args)

    monkeypatch.setattr(svc, "on_blob_created", database_down_once)
    receiver = FakeReceiver([json.dumps(_event(CLOUD_EVENT, job_id, len(data)))])
    QueueConsumer(svc, receiver).run(receiver.stop, max_wait=0)
    assert [(kind, m.delivery_count) for kind, m, _ in receiver.settled] == [("abandon", 0), ("complete", 1)]
    assert svc.get_job(job_id).status in ("uploaded", "awaiting_approval")


@pytest.mark.parametrize(
    "change",
    [
        {"container": "outputs"},  # not an upload
        {"api": "CreateFile"},  # an empty HNS file before FlushWithClose (notes §7.21)
    ],
)
def test_consumer_completes_events_that_announce_no_upload(svc, change):
    data = jpeg_bytes()
    job_id = _created_job(svc, data)
    deleted = {**EVENT_GRID, "eventType": "Microsoft.Storage.BlobDeleted"}
    receiver = FakeReceiver(
        [json.dumps(_event(EVENT_GRID, job_id, len(data), **change)), json.dumps(_event(deleted, job_id, len(data)))]
    )
    QueueConsumer(svc, receiver).run(receiver.stop, max_wait=0)
    assert [kind for kind, _, _ in receiver.settled] == ["complete", "complete"]
    assert svc.get_job(job_id).status == "created"


def test_consume_renews_locks_and_reconnects_after_a_failure(svc, monkeypatch):
    """`consume` (what `veil events` runs): the SDK client is replaced by one whose first receiver fails to
    open; the consumer retries, receives with an AutoLockRenewer, and settles the message."""
    from azure.servicebus import AutoLockRenewer, ServiceBusClient

    from veil.events.servicebus import consume

    data = jpeg_bytes()
    job_id = _created_job(svc, data)
    receiver = FakeReceiver([json.dumps(_event(EVENT_GRID, job_id, len(data)))])
    opened = []

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def get_queue_receiver(self, queue, auto_lock_renewer=None):
            opened.append((queue, auto_lock_renewer))
            if len(opened) == 1:
                raise ConnectionError("namespace unreachable")
            return receiver

    monkeypatch.setattr(ServiceBusClient, "from_connection_string", classmethod(lambda cls, conn: FakeClient()))
    consume(
        svc,
        "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x",
        "veil-uploads",
        receiver.stop,
    )
    assert [queue for queue, _ in opened] == ["veil-uploads", "veil-uploads"]
    assert isinstance(opened[1][1], AutoLockRenewer)
    assert [kind for kind, _, _ in receiver.settled] == ["complete"]
    assert svc.get_job(job_id).status in ("uploaded", "awaiting_approval")


# ---------------------------------------------------------------------------------------- webhook
@pytest.fixture()
def webhook(tmp_path):
    port = free_port()
    app = create_app(settings_for(tmp_path, port=port, events_secret="hook-secret"))
    with serve_app(app, port) as base:
        yield app.state.service, f"{base}/events/blob-created"


def test_webhook_event_grid_validation_handshake(webhook):
    _, url = webhook
    r = requests.post(
        f"{url}?secret=hook-secret", json=VALIDATION, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=10
    )
    assert r.status_code == 200 and r.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}


def test_webhook_cloudevents_options_handshake(webhook):
    _, url = webhook
    r = requests.options(
        f"{url}?secret=hook-secret", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10
    )
    assert r.status_code == 200 and r.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert "POST" in r.headers["Allow"]


@pytest.mark.parametrize(
    "schema, content_type, as_array",
    [
        (EVENT_GRID, "application/json; charset=utf-8", True),
        (EVENT_GRID, "application/json; charset=utf-8", False),
        (CLOUD_EVENT, "application/cloudevents+json; charset=utf-8", False),
        (CLOUD_EVENT, "application/cloudevents-batch+json; charset=utf-8", True),
    ],
)
def test_webhook_blob_created_marks_the_upload(webhook, schema, content_type, as_array):
    svc, url = webhook
    data = jpeg_bytes()
    job_id = _created_job(svc, data)
    event = _event(schema, job_id, len(data))
    r = requests.post(
        f"{url}?secret=hook-secret",
        data=json.dumps([event] if as_array else event),
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {"accepted": 1}, r.text
    _wait_priced(svc, job_id)
    job = svc.get_job(job_id)
    assert job.status == "awaiting_approval" and job.uploaded_size == len(data) and job.total_cost >= 1


def test_webhook_needs_its_secret_and_names_bad_payloads(webhook):
    svc, url = webhook
    event = json.dumps([_event(EVENT_GRID, "x", 1)])
    assert requests.post(url, data=event, timeout=10).status_code == 401
    assert requests.post(f"{url}?secret=wrong", data=event, timeout=10).status_code == 401
    assert (
        requests.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10).status_code == 401
    )
    bad = requests.post(f"{url}?secret=hook-secret", data='[{"subject": 1}]', timeout=10)
    assert bad.status_code == 400 and "eventType" in bad.json()["detail"]


@pytest.mark.parametrize(
    "body, problem",
    [
        ("[" * 100_000, "nested"),  # was a RecursionError (issue 18)
        (json.dumps([{**VALIDATION[0], "data": "512d38b6"}]), "validationCode"),  # was an AttributeError
        (json.dumps([{**VALIDATION[0], "data": ["512d38b6"]}]), "validationCode"),
        (json.dumps([{**EVENT_GRID, "data": {**EVENT_GRID["data"], "contentLength": 2**70}}]), "contentLength"),
        (json.dumps([{**EVENT_GRID, "data": {**EVENT_GRID["data"], "api": ["PutBlob"]}}]), None),  # unhashable
        (json.dumps([{**EVENT_GRID, "subject": "/blobServices/default/containers/uploads/blobs/\ud800"}]), "subject"),
        (json.dumps([{"eventType": "x", "data": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}]), "nested"),
    ],
)
def test_webhook_answers_400_to_malformed_deliveries(webhook, body, problem):
    _, url = webhook
    r = requests.post(f"{url}?secret=hook-secret", data=body, timeout=30)
    if problem is None:  # an event that announces no committed blob: accepted, nothing done
        assert r.status_code == 200 and r.json() == {"accepted": 0}, r.text
    else:
        assert r.status_code == 400 and problem in r.json()["detail"], r.text


def test_webhook_is_disabled_without_a_secret(tmp_path):
    port = free_port()
    app = create_app(settings_for(tmp_path, port=port))
    with serve_app(app, port) as base:
        r = requests.post(f"{base}/events/blob-created", json=VALIDATION, timeout=10)
    assert r.status_code == 403 and "VEIL_EVENTS_SECRET" in r.text
