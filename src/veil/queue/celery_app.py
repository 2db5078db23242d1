"""The same `process_job` behind Celery, for scaled-out deployments (optional: needs `veil[celery]`).

Run workers with `celery -A veil.queue.celery_app worker`; set `VEIL_WORKER=celery` on the API
servers so approved jobs are sent here. Both sides read the same `VEIL_*` settings.
"""

from __future__ import annotations

from celery import Celery

from ..settings import Settings

app = Celery("veil", broker=Settings().celery_broker_url)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_reject_on_worker_lost=True)


@app.task(name="veil.process_job", bind=True)
def process_job_task(self, job_id: str) -> None:
    from .tasks import default_service, process_job

    service = default_service()
    if (self.request.delivery_info or {}).get("redelivered"):
        service.requeue_interrupted(job_id)  # the worker that had it died; resume from the interrupted file
    process_job(job_id, service)


def dispatch(job_id: str) -> None:
    process_job_task.delay(job_id)
