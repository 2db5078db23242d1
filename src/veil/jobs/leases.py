"""Job leases: a worker runs a job only while it holds the job's lease (owner + expiry on the row, taken by
one conditional UPDATE and renewed by a heartbeat), and the sweep that queues again a job whose lease ran
out (its worker died) and sends queued jobs that were never sent or not taken. The states are
`veil.jobs.service`'s state machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import Job, Task, VideoSegment, utcnow
from ..db.session import changed
from ..settings import Settings

log = logging.getLogger(__name__)


def holds(job_id: str, owner: str):
    """The condition "`owner` still runs `job_id`", for worker-side conditional writes."""
    return (Job.id == job_id) & (Job.status == "running") & (Job.lease_owner == owner)


class Leases:
    def __init__(self, settings: Settings, db: sessionmaker[Session], send: Callable[[str], bool]) -> None:
        """`send(job_id)` hands a queued job to the queue (False when that failed; the next sweep retries)."""
        self.settings = settings
        self.db = db
        self._send = send

    def claim(self, job_id: str, owner: str) -> bool:
        """queued (or running under a lease that ran out) → running, leased to `owner`: true for exactly
        one caller. A message delivered again while the job's lease is alive claims nothing."""
        now = utcnow()
        with self.db.begin() as session:
            rows = changed(
                session,
                update(Job)
                .where(
                    Job.id == job_id,
                    or_(Job.status == "queued", (Job.status == "running") & (Job.lease_expires_at < now)),
                )
                .values(
                    status="running",
                    started_at=func.coalesce(Job.started_at, now),
                    attempts=Job.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + self._lease,
                ),
            )
        return rows == 1

    def renew_lease(self, job_id: str, owner: str) -> bool:
        """Extend `owner`'s lease (the heartbeat); False when it no longer holds it."""
        with self.db.begin() as session:
            rows = changed(
                session, update(Job).where(holds(job_id, owner)).values(lease_expires_at=utcnow() + self._lease)
            )
        return rows == 1

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.job_lease_seconds)

    def sweep(self) -> tuple[list[str], list[str]]:
        """Requeue running jobs whose lease ran out (their worker died) and send queued jobs that were
        never sent (the broker was down) or not taken for `redispatch_seconds`. Returns (requeued, sent)."""
        now = utcnow()
        with self.db.begin() as session:
            expired = list(session.scalars(select(Job.id).where(Job.status == "running", Job.lease_expires_at < now)))
            if expired:
                session.execute(
                    update(Task).where(Task.job_id.in_(expired), Task.status == "running").values(status="pending")
                )
                session.execute(
                    update(Job)
                    .where(Job.id.in_(expired), Job.status == "running", Job.lease_expires_at < now)
                    .values(status="queued", lease_owner=None, lease_expires_at=None, dispatched_at=None)
                )
        sent = []
        for job_id in expired:
            log.warning("job %s: its worker stopped renewing the lease; queued again", job_id)
            if self._send(job_id):
                sent.append(job_id)
        grace = now - timedelta(seconds=min(10.0, self.settings.redispatch_seconds))  # approve is still sending
        stale = now - timedelta(seconds=self.settings.redispatch_seconds)
        due = (Job.dispatched_at.is_(None) & (func.coalesce(Job.approved_at, now) < grace)) | (
            Job.dispatched_at < stale
        )
        with self.db() as session:
            unsent = list(session.scalars(select(Job.id).where(Job.status == "queued", due).order_by(Job.approved_at)))
        for job_id in unsent:
            with self.db.begin() as session:  # one process sends it: the one whose update matched
                taken = changed(
                    session, update(Job).where(Job.id == job_id, Job.status == "queued", due).values(dispatched_at=now)
                )
            if taken and self._send(job_id):
                sent.append(job_id)
        return expired, sent

    def hand_back(self, job_id: str, owner: str) -> bool:
        """A worker shutting down gives its job back at once (`veil.jobs.drain`): its running file and the
        segments it ran are pending again, the job queued without a lease (its progress kept) and sent, so any
        worker resumes it without waiting for the lease to run out. False when `owner` no longer held it."""
        with self.db.begin() as session:
            if (
                changed(
                    session,
                    update(Job)
                    .where(holds(job_id, owner))
                    .values(status="queued", lease_owner=None, lease_expires_at=None, dispatched_at=None),
                )
                != 1
            ):
                return False
            session.execute(
                update(Task).where(Task.job_id == job_id, Task.status == "running").values(status="pending")
            )
            tasks = select(Task.id).where(Task.job_id == job_id).scalar_subquery()
            session.execute(
                update(VideoSegment)
                .where(
                    VideoSegment.task_id.in_(tasks), VideoSegment.status == "running", VideoSegment.lease_owner == owner
                )
                .values(status="pending", lease_owner=None, lease_expires_at=None)
            )
        self._send(job_id)
        return True

    def queued_ids(self, limit: int = 10) -> list[str]:
        with self.db() as session:
            return list(
                session.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.approved_at).limit(limit))
            )

    def requeue_interrupted(self) -> int:
        """At the start-up of a single-process deployment (embedded worker), every job left `running` by the
        crash goes back to the queue at once, without waiting for its lease to run out; finished files stay
        finished and the interrupted one restarts from its beginning."""
        with self.db.begin() as session:
            ids = list(session.scalars(select(Job.id).where(Job.status == "running")))
            if ids:
                session.execute(
                    update(Task).where(Task.job_id.in_(ids), Task.status == "running").values(status="pending")
                )
                tasks = select(Task.id).where(Task.job_id.in_(ids)).scalar_subquery()
                session.execute(
                    update(VideoSegment)
                    .where(VideoSegment.task_id.in_(tasks), VideoSegment.status == "running")
                    .values(status="pending", lease_owner=None, lease_expires_at=None)
                )
                session.execute(
                    update(Job)
                    .where(Job.id.in_(ids), Job.status == "running")
                    .values(status="queued", lease_owner=None, lease_expires_at=None)
                )
        return len(ids)
