"""Upload events: each source of "an upload was committed" becomes one call,
`JobService.on_blob_created(container, blob, size, etag)`.

- `parse`: Blob Created events in the Event Grid and CloudEvents 1.0 schemas (notes §3).
- `servicebus`: the consumer of a Service Bus queue that Event Grid delivers to (`veil events`, or a
  thread of `veil serve`).
- The Event Grid webhook route is `veil.api.events`; polling for stores without events is
  `JobService.poll_uploads` (run by `veil.queue.sweeper`); the embedded store's endpoint calls
  `on_blob_created` itself.
"""
