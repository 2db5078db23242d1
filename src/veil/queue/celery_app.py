"""The same `process_job` behind Celery, for scaled-out deployments (optional: needs `veil[celery]`).

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

from ..settings import Settings


def make_app(settings: Settings) -> Celery:
    app = Celery("veil", broker=settings.celery_broker_url)
    app.conf.update(
        task_acks_late=True, worker_prefetch_multiplier=1, task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout,
                                  **settings.celery_transport_options},
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        task_default_queue="veil", task_ignore_result=True)
    return app


app = make_app(Settings())


@app.task(name="veil.process_job")
def process_job_task(job_id: str) -> None:
    from .tasks import default_service, process_job

    process_job(job_id, default_service())


def dispatch(job_id: str) -> None:
    process_job_task.apply_async(args=[job_id], retry=False)


@app.task(name="veil.process_segment")
def process_segment_task(job_id: str, task_id: int, index: int) -> None:
    from .segments import process_segment
    from .tasks import default_service

    process_segment(job_id, task_id, index, default_service())


def dispatch_segment(job_id: str, task_id: int, index: int) -> None:
    """One segment of a long video, for any worker (`veil.queue.segments`)."""
    process_segment_task.apply_async(args=[job_id, task_id, index], retry=False)
