"""Graceful shutdown of a worker process (`veil serve`'s embedded worker, `veil worker`).

On SIGTERM a worker takes no more work (no new job, file or segment); the file or segment in progress
gets VEIL_SHUTDOWN_GRACE_SECONDS to finish. A job whose next file cannot start, or whose file is still
running when the grace period ends, is handed back at once: its lease released, its running file and
segments pending again, the job queued and sent to the queue, so another worker resumes it (finished files
and segments stay finished) without waiting for the lease to run out. Its progress is kept: a job's
reported progress never moves backwards.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class HandBack(Exception):
    """The worker is shutting down: give the job back (`Leases.hand_back`) instead of going on."""


class Drain:
    """A worker process's shutdown: `begin(grace)` once; `requested` from then on, `overdue` after `grace`."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._deadline = float("inf")

    def begin(self, grace: float) -> None:
        if not self._requested.is_set():
            self._deadline = time.monotonic() + grace
            self._requested.set()
            log.info("shutting down: no new work; work in progress has %g s to finish", grace)

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def overdue(self) -> bool:
        return self._requested.is_set() and time.monotonic() >= self._deadline

    def check(self) -> None:
        """Raise HandBack once the grace period is over (called between frames through the progress callback)."""
        if self.overdue():
            raise HandBack()

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())


process_drain = Drain()  # `veil worker`'s: begun by Celery's worker_shutting_down signal (`veil.queue.celery_app`)
