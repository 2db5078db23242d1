"""Job ownership across workers: the lease on the job row (exclusive claim, heartbeat, expiry and
sweep), writes refused to a worker that lost its lease, re-sending jobs whose send failed, one
callback secret for every process of a deployment, and uploads whose pricing process died."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update

from _service_helpers import assert_charged_once, database_url_for, jpeg_bytes, settings_for
from veil.db.models import Job, utcnow
from veil.jobs import callbacks
from veil.jobs.keys import create_key
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, build_service


def _service(tmp_path: Path, name: str = "a", store=None, **overrides):
    db = database_url_for(tmp_path) or f"sqlite:///{tmp_path / 'shared.db'}"  # several "processes", one database
    return build_service(settings_for(tmp_path / name, database_url=db, **overrides), store=store)


@pytest.fixture()
def svc(tmp_path):
    service = _service(tmp_path, job_lease_seconds=3)
    yield service
    service.close()


def _queued(svc, data: bytes = b"", name: str = "x.jpg") -> tuple[str, str]:
    data = data or jpeg_bytes()
    _, key = create_key(svc.db, 100)
    job = svc.create_job(key.id, name, len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) == "approved"
    return key.id, job.id


def _copy_engine(src, dst, config, progress=None, **_):
    Path(dst).write_bytes(Path(src).read_bytes())


def _expire(svc, job_id: str) -> None:
    with svc.db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claim_is_exclusive_and_a_live_lease_is_never_taken(svc):
    _, job_id = _queued(svc)
    assert svc.leases.claim(job_id, "w1")
    assert not svc.leases.claim(job_id, "w2")  # the redelivered message of a job a live worker runs
    assert svc.leases.renew_lease(job_id, "w1") and not svc.leases.renew_lease(job_id, "w2")
    assert svc.leases.sweep() == ([], [])  # a live lease is not swept
    assert process_job(job_id, svc) is False
    job = svc.get_job(job_id)
    assert job.status == "running" and job.lease_owner == "w1" and job.attempts == 1


def test_expired_lease_is_swept_requeued_and_sent_again(svc):
    sent = []
    svc.dispatch = sent.append
    _, job_id = _queued(svc)
    sent.clear()
    assert svc.leases.claim(job_id, "dead-worker")
    _expire(svc, job_id)
    requeued, resent = svc.leases.sweep()
    assert requeued == [job_id] and resent == [job_id] and sent == [job_id]
    job = svc.get_job(job_id)
    assert job.status == "queued" and job.lease_owner is None and job.dispatched_at is not None
    assert svc.leases.claim(job_id, "w2") and not svc.leases.renew_lease(job_id, "dead-worker")


def test_redelivery_after_expiry_retakes_the_job_without_a_sweep(svc, monkeypatch):
    monkeypatch.setattr("veil.engine.anonymize.anonymize", _copy_engine)
    _, job_id = _queued(svc)
    assert svc.leases.claim(job_id, "dead-worker")
    _expire(svc, job_id)
    assert process_job(job_id, svc) is True
    job = svc.get_job(job_id)
    assert job.status == "completed" and job.attempts == 2 and job.lease_owner is None
    assert_charged_once(svc.db, job_id, 100)


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(svc, monkeypatch):
    """Worker A stalls past its lease; the job is swept and taken by B. A's next progress write is
    refused, A stops, and neither its task state, its result nor a second charge reach the database."""
    seen = []

    def stalled_engine(src, dst, config, progress=None, **_):
        seen.append("A")
        job_id = seen_job[0]
        _expire(svc, job_id)
        assert svc.leases.sweep()[0] == [job_id]
        assert svc.leases.claim(job_id, "worker-B")
        Path(dst).write_bytes(b"A's output")
        progress(0.5)  # A's write: refused, A stops here
        seen.append("A went on")

    seen_job = []
    monkeypatch.setattr("veil.engine.anonymize.anonymize", stalled_engine)
    _, job_id = _queued(svc)
    seen_job.append(job_id)
    assert process_job(job_id, svc) is True
    assert seen == ["A"]
    job = svc.get_job(job_id)
    assert job.status == "running" and job.lease_owner == "worker-B" and job.progress == 0.0
    assert [t.status for t in job.tasks] == ["pending"] and svc.store.list(OUTPUT_CONTAINER) == []
    assert_charged_once(svc.db, job_id, 100)


def test_a_worker_that_lost_its_lease_after_writing_its_output_deletes_it(svc, monkeypatch):
    def engine_then_lease_taken(src, dst, config, progress=None, **_):
        _copy_engine(src, dst, config)
        _expire(svc, seen_job[0])  # the lease runs out while the output is stored
        svc.leases.sweep()
        assert svc.leases.claim(seen_job[0], "worker-B")

    seen_job = []
    monkeypatch.setattr("veil.engine.anonymize.anonymize", engine_then_lease_taken)
    _, job_id = _queued(svc)
    seen_job.append(job_id)
    assert process_job(job_id, svc) is True
    job = svc.get_job(job_id)
    assert job.lease_owner == "worker-B" and [t.status for t in job.tasks] == ["pending"]
    assert svc.store.list(OUTPUT_CONTAINER) == []


def test_the_heartbeat_keeps_a_long_job_leased(svc, monkeypatch):
    lease = svc.settings.job_lease_seconds
    swept = []

    def long_engine(src, dst, config, progress=None, **_):
        for _ in range(3):  # runs for twice the lease, sweeping as another process would
            time.sleep(lease * 2 / 3)
            swept.extend(svc.leases.sweep()[0])
        _copy_engine(src, dst, config)

    monkeypatch.setattr("veil.engine.anonymize.anonymize", long_engine)
    _, job_id = _queued(svc)
    process_job(job_id, svc)
    assert swept == [] and svc.get_job(job_id).status == "completed"


def test_a_job_whose_send_failed_is_sent_again(svc):
    calls = []

    def broker_down_then_up(job_id):
        calls.append(job_id)
        if len(calls) == 1:
            raise ConnectionError("broker unreachable")

    svc.dispatch = broker_down_then_up
    key_id, job_id = _queued(svc)  # approve answers "approved" although the send failed
    job = svc.get_job(job_id)
    assert job.status == "queued" and job.dispatched_at is None and len(calls) == 1
    assert svc.leases.sweep() == ([], [])  # approval just happened: the request may still be sending
    with svc.db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(approved_at=utcnow() - timedelta(seconds=30)))
    assert svc.leases.sweep() == ([], [job_id]) and calls == [job_id, job_id]
    assert svc.get_job(job_id).dispatched_at is not None
    assert svc.leases.sweep() == ([], [])  # sent: not again until redispatch_seconds pass


def test_a_queued_job_nobody_took_is_sent_again_after_redispatch_seconds(svc):
    sent = []
    svc.dispatch = sent.append
    _, job_id = _queued(svc)
    with svc.db.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(dispatched_at=utcnow() - timedelta(seconds=svc.settings.redispatch_seconds + 1))
        )
    assert svc.leases.sweep() == ([], [job_id]) and sent == [job_id, job_id]


class _Receiver:
    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                receiver.bodies.append((self.rfile.read(int(self.headers["Content-Length"])), dict(self.headers)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_callbacks_sent_by_a_worker_verify_with_the_api_servers_secret(tmp_path, monkeypatch):
    """API server and worker: separate data dirs, one database, no VEIL_CALLBACK_SECRET."""
    monkeypatch.setattr("veil.engine.anonymize.anonymize", _copy_engine)
    loopback = "127.0.0.1/32"  # the receiver's address, allowed as an operator of an internal network would
    api = _service(tmp_path, "api", callback_secret=None, callback_allowed_networks=loopback)
    worker = _service(
        tmp_path,
        "worker",
        store=api.store,
        callback_secret=None,  # one store, like Azure
        callback_allowed_networks=loopback,
    )
    receiver = _Receiver()
    try:
        key_id, job_id = _queued(api)
        api.notifier.register_callback(key_id, receiver.url, job_id)
        assert worker.notifier.deployment_secret() == api.notifier.deployment_secret()
        secret = api.notifier.callback_secret(key_id)  # what notify_on_job_status hands the client
        process_job(job_id, worker)
        deadline = time.monotonic() + 20
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.bodies, "no callback from the worker"
        body, headers = receiver.bodies[-1]
        assert json.loads(body)["state"] == "completed"
        assert callbacks.verify(body, secret, headers[callbacks.SIGNATURE_HEADER], headers[callbacks.TIMESTAMP_HEADER])
    finally:
        receiver.server.shutdown()
        api.close()
        worker.close()


def test_uploads_whose_pricing_process_died_are_priced_by_another(svc):
    """An API server died while pricing: the job stays `uploaded`; another's sweeper prices it once it is
    stalled, and leaves a fresh upload to the server pricing it."""
    _, key = create_key(svc.db, 10)
    jobs = {}
    for name, age in (("stalled", 600), ("fresh", 0)):
        data = jpeg_bytes(seed=age)
        job = svc.create_job(key.id, f"{name}.jpg", len(data)).job
        svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
        with svc.db.begin() as session:  # committed and marked, as by a process that died before pricing
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status="uploaded", uploaded_size=len(data), uploaded_at=utcnow() - timedelta(seconds=age))
            )
        jobs[name] = job.id
    svc.price_pending(stalled_seconds=300)
    deadline = time.monotonic() + 30
    while svc.get_job(jobs["stalled"]).status == "uploaded" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.get_job(jobs["stalled"]).status == "awaiting_approval"
    assert svc.get_job(jobs["fresh"]).status == "uploaded"


def test_approve_during_pricing_answers_waiting_instead_of_pricing_again(svc, monkeypatch):
    """A large upload is being priced in the background: approve waits briefly and answers "waiting" (302)
    rather than downloading and pricing the upload a second time inside the request."""
    import threading

    from veil.jobs import pricing

    release, calls = threading.Event(), []
    real_cost_of = pricing.cost_of

    def slow_cost_of(*args, **kwargs):
        calls.append(1)
        release.wait(10)
        return real_cost_of(*args, **kwargs)

    monkeypatch.setattr(pricing, "cost_of", slow_cost_of)
    _, key = create_key(svc.db, 10)
    data = jpeg_bytes()
    job = svc.create_job(key.id, "big.jpg", len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) == "waiting" and len(calls) == 1
    release.set()
    deadline = time.monotonic() + 30
    while svc.get_job(job.id).status == "uploaded" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.approve(key.id, job.id) == "approved" and len(calls) == 1
