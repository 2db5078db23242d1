"""Prometheus metrics, with the official client library (`prometheus_client`); every metric is listed in
docs/scaling.md ("Operations").

Two kinds, so that every figure comes from where it is true:

- **The deployment's state, read from the database at each scrape** (`DatabaseCollector`, on `veil serve`'s
  /metrics): jobs by state, queue depth, worker leases, credits reserved and refunded, upload bytes,
  callback deliveries by outcome. Every API server shows the same figures, whichever process did the work.
- **This process's work** (module-level metrics in the default registry): files processed, their
  processing seconds and frames a second by kind, frames processed, jobs handed back at shutdown. Counted
  by the process that holds the job (the embedded worker: `veil serve`'s /metrics; `veil worker`: its own
  port, VEIL_METRICS_PORT).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .db.models import STATES, CallbackDelivery, CreditEntry, Job, Task, VideoSegment, utcnow

log = logging.getLogger(__name__)
disable_created_metrics()  # no `*_created` series beside each counter and histogram: noise for Prometheus

DELIVERY_OUTCOMES = ("queued", "delivered", "refused", "failed", "dropped")

FRAMES = Counter(
    "veil_frames_processed",
    "Frames anonymized by this process, counted as the engine reports "
    "progress (an image is one frame); by kind (image, video).",
    ["kind"],
)
PROCESSING_SECONDS = Histogram(
    "veil_processing_seconds",
    "Wall-clock seconds this process took to anonymize one file, by kind.",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
FRAMES_PER_SECOND = Histogram(
    "veil_frames_per_second",
    "Throughput of one anonymized file: its frames over its processing seconds, by kind.",
    ["kind"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 240, 480),
)
HANDED_BACK = Counter(
    "veil_jobs_handed_back",
    "Jobs this process handed back at shutdown because their file did "
    "not finish within VEIL_SHUTDOWN_GRACE_SECONDS (lease released, queued for another worker).",
)


@contextmanager
def file_meter(kind: str, frames: int, progress: Callable[[float], None]) -> Iterator[Callable[[float], None]]:
    """Wraps the engine's progress callback for one file: counts its frames as they are reported and, once
    the file is done (no exception), its processing seconds and frames a second."""
    frames = max(frames, 1)
    counted = 0
    started = time.monotonic()

    def count(upto: int) -> None:
        nonlocal counted
        if upto > counted:
            FRAMES.labels(kind).inc(upto - counted)
            counted = upto

    def report(fraction: float) -> None:
        count(min(int(fraction * frames), frames))
        progress(fraction)

    yield report
    count(frames)
    seconds = max(time.monotonic() - started, 1e-6)
    PROCESSING_SECONDS.labels(kind).observe(seconds)
    FRAMES_PER_SECOND.labels(kind).observe(frames / seconds)


class DatabaseCollector(Collector):
    """The deployment's figures, read from the database at each scrape (a few aggregate queries)."""

    def __init__(self, db) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "veil_database_up",
            "1 when this scrape read the deployment's figures from the "
            "database, 0 when it could not (they are left out).",
        )
        try:
            figures = list(self._figures())
        except Exception as exc:  # noqa: BLE001 - the scrape still answers, saying the database is down
            log.warning("metrics: the database could not be read (%s: %s)", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from figures

    def _figures(self) -> Iterator[Metric]:
        now = utcnow()
        with self.db() as session:
            by_state = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            pending_segments = session.scalar(
                select(func.count())
                .select_from(VideoSegment)
                .join(Task)
                .join(Job)
                .where(VideoSegment.status == "pending", Job.status == "running")
            )
            leases = {
                ("job", held): session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.status == "running", (Job.lease_expires_at >= now) if held else (Job.lease_expires_at < now)
                    )
                )
                for held in (True, False)
            }
            leases.update(
                {
                    ("segment", held): session.scalar(
                        select(func.count())
                        .select_from(VideoSegment)
                        .where(
                            VideoSegment.status == "running",
                            (VideoSegment.lease_expires_at >= now) if held else (VideoSegment.lease_expires_at < now),
                        )
                    )
                    for held in (True, False)
                }
            )
            ledger = dict(
                session.execute(
                    select(CreditEntry.kind, func.sum(CreditEntry.amount))
                    .where(CreditEntry.kind.in_(("reserve", "refund")))
                    .group_by(CreditEntry.kind)
                ).all()
            )
            uploaded = session.scalar(select(func.coalesce(func.sum(Job.uploaded_size), 0)))
            deliveries = dict(
                session.execute(select(CallbackDelivery.status, func.count()).group_by(CallbackDelivery.status)).all()
            )
        jobs = GaugeMetricFamily("veil_jobs", "Jobs in the database by state.", labels=["state"])
        for state in sorted(set(STATES) | set(by_state)):
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily(
            "veil_queue_depth",
            "Work waiting for a worker: queued jobs, and pending segments of running jobs' long videos.",
            labels=["what"],
        )
        depth.add_metric(["jobs"], by_state.get("queued", 0))
        depth.add_metric(["segments"], pending_segments or 0)
        yield depth
        held = GaugeMetricFamily(
            "veil_worker_leases",
            "Running jobs and video segments by lease: `held` (a worker "
            "renews it) or `expired` (its worker stopped; the sweeper queues it again).",
            labels=["kind", "state"],
        )
        for (kind, alive), count in leases.items():
            held.add_metric([kind, "held" if alive else "expired"], count or 0)
        yield held
        yield CounterMetricFamily(
            "veil_credits_reserved",
            "Credits reserved for approved jobs, ever (the ledger's reserve entries).",
            value=-(ledger.get("reserve") or 0),
        )
        yield CounterMetricFamily(
            "veil_credits_refunded",
            "Credits refunded to keys, ever (failed through no fault of the input, cancelled).",
            value=ledger.get("refund") or 0,
        )
        yield CounterMetricFamily(
            "veil_upload_bytes", "Bytes of committed uploads (the jobs' input sizes).", value=uploaded or 0
        )
        callbacks = GaugeMetricFamily(
            "veil_callback_deliveries",
            "Callback deliveries recorded, by outcome (queued, delivered, refused, failed, dropped).",
            labels=["outcome"],
        )
        for outcome in sorted(set(DELIVERY_OUTCOMES) | set(deliveries)):
            callbacks.add_metric([outcome], deliveries.get(outcome, 0))
        yield callbacks


def exposition(database: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """This process's metrics (and `database`'s figures), in the text format; with its content type."""
    body = generate_latest(REGISTRY)
    if database is not None:
        body += generate_latest(database)
    return body, CONTENT_TYPE_LATEST


def database_registry(db) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db))
    return registry


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """This process's metrics on http://host:port/metrics (a thread of prometheus_client's)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
