"""`veil.jobs.runner.process_job` and `veil.jobs.segments.process_segment` behind Celery, for scaled-out
deployments (optional: needs `veil[celery]`).

Run workers with `veil worker` (Celery's worker with Veil's settings and its sweeper); set
`VEIL_WORKER=celery` on the API servers so approved jobs are sent here. Both sides read the same
`VEIL_*` settings.

The broker only delivers; the database decides who runs a job (its lease). Messages are acknowledged
when the job ends (`acks_late`), with a visibility timeout longer than any job, so a message is never
handed to a second worker while the first still runs it. A worker that dies is noticed through its
expired lease by the sweeper of any process, which queues the job and sends it again; the dead worker's
own message, redelivered much later, finds the job finished (or leased) and is dropped.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_shutting_down

from ..jobs.drain import process_drain
from ..jobs.runner import process_job
from ..jobs.segments import process_segment
from ..jobs.service import JobService, build_service
from ..settings import Settings

_service: JobService | None = None


def make_app(settings: Settings) -> Celery:
    app = Celery("veil", broker=settings.celery_broker_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_reject_on_worker_lost=True,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout,
            **settings.celery_transport_options,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="veil",
        task_ignore_result=True,
    )
    return app


app = make_app(Settings())


def wire(service: JobService) -> JobService:
    """Send `service`'s queued jobs and long videos' segments to the Celery workers."""
    service.dispatch = dispatch
    service.dispatch_segment = dispatch_segment
    return service


def use_service(service: JobService) -> None:
    """The service Celery tasks in this process use (`veil worker` builds it from its settings)."""
    global _service
    _service = wire(service)


def default_service() -> JobService:
    """The service tasks use: `use_service`'s, else one built from the environment (`VEIL_*`)."""
    global _service
    if _service is None:
        _service = wire(build_service(Settings()))
    return _service


@app.task(name="veil.process_job")
def process_job_task(job_id: str) -> None:
    process_job(job_id, default_service())


def dispatch(job_id: str) -> None:
    process_job_task.apply_async(args=[job_id], retry=False)


@app.task(name="veil.process_segment")
def process_segment_task(job_id: str, task_id: int, index: int) -> None:
    process_segment(job_id, task_id, index, default_service())


def dispatch_segment(job_id: str, task_id: int, index: int) -> None:
    """One segment of a long video, for any worker (`veil.jobs.segments`)."""
    process_segment_task.apply_async(args=[job_id, task_id, index], retry=False)


def on_celery_shutdown(grace: float) -> None:
    """Begin `process_drain` when Celery's worker starts its (warm) shutdown: Celery then waits for the
    running tasks, which finish their file or hand their job back within `grace` (`veil.jobs.drain`)."""

    def begin(**_: object) -> None:
        process_drain.begin(grace)

    worker_shutting_down.connect(begin, weak=False)
