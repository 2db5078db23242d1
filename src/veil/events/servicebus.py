"""Service Bus queue consumer (azure-servicebus, peek-lock; notes §3.4 and §6).

Each message holds one Event Grid event. It is completed only after `on_blob_created` has saved the
job's state; a message delivered again (at-least-once) finds the same ETag already handled and changes
nothing; a message that cannot be read is dead-lettered with the reason; a failure to save (database
down) abandons it so Service Bus delivers it again. Locks are renewed by the SDK's AutoLockRenewer.
"""

from __future__ import annotations

import logging
import threading

from ..jobs.service import JobService
from .parse import EventError, blobs_created

log = logging.getLogger(__name__)
UNREADABLE = "unreadable event"


def message_body(message) -> bytes:
    body = message.body  # data body: an iterable of byte sections; value body: the value itself
    if isinstance(body, (bytes, str)):
        return body.encode() if isinstance(body, str) else body
    return b"".join(body)


class QueueConsumer:
    """Settles messages from `receiver` (a ServiceBusReceiver, or anything with its settle methods)."""

    def __init__(self, service: JobService, receiver) -> None:
        self.service = service
        self.receiver = receiver

    def handle(self, message) -> str:
        """Process one message and settle it; returns `completed`, `dead-lettered` or `abandoned`."""
        try:
            found = blobs_created(message_body(message))
        except (EventError, TypeError) as exc:
            log.warning("dead-lettering message %s: %s", message.message_id, exc)
            self.receiver.dead_letter_message(message, reason=UNREADABLE, error_description=str(exc)[:1000])
            return "dead-lettered"
        try:
            for blob in found:
                self.service.on_blob_created(blob.container, blob.blob, blob.size, blob.etag)
        except Exception:  # noqa: BLE001 - not saved: let Service Bus deliver it again
            log.exception("message %s: saving the upload failed; abandoned for redelivery", message.message_id)
            self.receiver.abandon_message(message)
            return "abandoned"
        self.receiver.complete_message(message)
        return "completed"

    def run(self, stop: threading.Event, max_wait: float = 5.0) -> None:
        while not stop.is_set():
            for message in self.receiver.receive_messages(max_message_count=20, max_wait_time=max_wait):
                self.handle(message)


def consume(service: JobService, connection_string: str, queue: str, stop: threading.Event) -> None:
    """Consume `queue` until `stop` is set, reconnecting (with a growing pause) after errors."""
    from azure.servicebus import AutoLockRenewer, ServiceBusClient

    pause = 1.0
    while not stop.is_set():
        try:
            renewer = AutoLockRenewer(max_lock_renewal_duration=300)
            with (
                ServiceBusClient.from_connection_string(connection_string) as client,
                client.get_queue_receiver(queue, auto_lock_renewer=renewer) as receiver,
            ):
                log.info("consuming Blob Created events from Service Bus queue %s", queue)
                pause = 1.0
                QueueConsumer(service, receiver).run(stop)
            renewer.close()
        except Exception:  # noqa: BLE001 - network or namespace trouble: retry
            log.warning("Service Bus consumer: connection failed; retrying in %.0f s", pause, exc_info=True)
            stop.wait(pause)
            pause = min(pause * 2, 60.0)
