"""The upkeep every process of a deployment runs on a background thread.

Every process (API server, `veil worker`): queue again jobs whose lease ran out (a dead worker) and send
queued jobs that were never sent or not taken (`Leases.sweep`). API servers also poll the store for
committed uploads when it sends no events (so the cost is known and the "awaiting approval" callback
goes out seconds after the commit), price uploads whose pricing process died, and expire stale upload
sessions (`housekeeping`).
"""

from __future__ import annotations

import logging
import threading
import time

from ..jobs.review import expire_unreviewed
from ..jobs.service import JobService

log = logging.getLogger(__name__)
STALLED_PRICING_SECONDS = 300.0  # an upload still unpriced this long after its commit: its pricer died


class Sweeper:
    def __init__(self, service: JobService, api: bool = True) -> None:
        self.service = service
        settings = service.settings
        self._duties = [("sweep", service.leases.sweep, settings.sweep_seconds)]
        if api:
            self._duties.append(("housekeeping", service.housekeeping, settings.housekeeping_seconds))
            self._duties.append(("review expiry", lambda: expire_unreviewed(service), settings.housekeeping_seconds))
            self._duties.append(("stalled pricing", lambda: service.price_pending(STALLED_PRICING_SECONDS), 60.0))
            if settings.upload_poll_seconds > 0:
                self._duties.append(("upload polling", service.poll_uploads, settings.upload_poll_seconds))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="veil-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        due = [0.0] * len(self._duties)
        tick = min(interval for _, _, interval in self._duties)
        while not self._stop.is_set():
            for n, (name, duty, interval) in enumerate(self._duties):
                if time.monotonic() < due[n] or self._stop.is_set():
                    continue
                due[n] = time.monotonic() + interval
                try:
                    duty()
                except Exception:  # noqa: BLE001 - e.g. the database briefly unavailable: next round
                    log.exception("%s failed", name)
            self._stop.wait(tick)
