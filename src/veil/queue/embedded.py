"""The embedded worker: threads inside `veil serve` running `process_job`, polling the database.

The queue is the jobs table itself (status `queued`), so queued jobs survive a restart, and on
start-up jobs a crash left `running` are put back in the queue (single-process deployments only:
with several servers on one database use Celery workers instead). `stop(grace)` is the graceful shutdown
of `veil serve` (`veil.jobs.drain`): no new job or file; the file in progress gets `grace` seconds, after
which its job is handed back (queued, lease released, progress kept), logged.
"""

from __future__ import annotations

import logging
import threading

from ..jobs.drain import Drain
from ..jobs.runner import process_job
from ..jobs.service import JobService

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, service: JobService, concurrency: int = 1, poll_seconds: float = 1.0) -> None:
        self.service = service
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._drain = Drain()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        requeued = self.service.leases.requeue_interrupted()
        if requeued:
            log.info("requeued %d job(s) interrupted by a restart", requeued)
        self.service.price_pending()
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"veil-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self, job_id: str | None = None) -> None:
        """Called when a job is queued, so an idle worker starts it without waiting for the next poll."""
        self._wake.set()

    def stop(self, grace: float = 30.0) -> None:
        """Take no more work; give the file in progress `grace` seconds, then hand its job back. A thread still
        busy 10 s after that (a file with no progress callback for that long) is left: its job stays `running`
        and is queued again at the next start, or by another process's sweeper when its lease runs out."""
        self._drain.begin(grace)
        self._wake.set()
        for thread in self._threads:
            thread.join(self._drain.remaining() + 10.0)
            if thread.is_alive():
                log.warning(
                    "%s still busy %g s after the grace period; its job is queued again at the next start",
                    thread.name,
                    10.0,
                )
        self._threads.clear()

    def _loop(self) -> None:
        while not self._drain.requested:
            worked = False
            try:
                for job_id in self.service.leases.queued_ids():
                    if self._drain.requested:
                        break
                    process_job(job_id, self.service, self._drain)
                    worked = True
            except Exception:  # noqa: BLE001 - e.g. the database briefly unavailable; try again later
                log.exception("embedded worker loop")
            if not worked:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
