"""The task function `process_job` and the embedded worker: tasks per file, progress, failure rules,
refunds, archives refused with a clear description, outputs in the store, restart recovery."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _service_helpers import jpeg_bytes, settings_for
from veil.jobs.credits import ledger
from veil.jobs.keys import create_key, get_key
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, build_service
from veil.queue.embedded import EmbeddedWorker


@pytest.fixture()
def svc(tmp_path):
    service = build_service(settings_for(tmp_path))
    yield service
    service.close()


def _submit(svc, data: bytes, name: str, credits: int = 100) -> tuple[str, str]:
    """Create, upload, price and approve a job; returns (key id, job id)."""
    _, key = create_key(svc.db, credits)
    job = svc.create_job(key.id, name, len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) in ("approved", "already")  # already: refused at upload
    return key.id, job.id


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _face_photo(shared_data: Path) -> bytes:
    return next(iter(sorted((shared_data / "dlib_faces" / "images").glob("*.jpg")))).read_bytes()


def test_archive_with_a_corrupt_video_fails_only_that_task(svc, shared_data, detection_models):
    photo = _face_photo(shared_data)
    corrupt = (shared_data / "videos" / "intel_car-detection.mp4").read_bytes()[:20000]
    key_id, job_id = _submit(svc, _zip({"a.jpg": photo, "b.png": _png(), "broken.mp4": corrupt}), "set.zip")
    process_job(job_id, svc)
    job = svc.get_job(job_id)
    report = svc.report(job)
    assert job.status == "completed" and report["job_status"] == 100, report
    by_name = {t["input_file"]: t for t in report["tasks"]}
    assert by_name["broken.mp4"]["status"] == "failed" and by_name["broken.mp4"]["error"]
    assert by_name["broken.mp4"]["download_link"] is None
    assert "broken.mp4" in report["job_status_description"]
    for name in ("a.jpg", "b.png"):
        task = by_name[name]
        assert task["status"] == "completed" and task["download_link"] and task["output_file"] != name
        blob = next(t.output_blob for t in job.tasks if t.input_name == name)
        with svc.store.open_read(OUTPUT_CONTAINER, blob) as f:
            out = Image.open(io.BytesIO(f.read()))
        assert out.size == Image.open(io.BytesIO(photo if name == "a.jpg" else _png())).size
    assert job.refunded_credits == 0 and not (svc.settings.data_dir / "work" / job_id).exists()


def test_job_fails_and_is_refunded_when_no_file_succeeds_through_no_fault_of_the_input(svc, monkeypatch):
    def broken_engine(src, dst, config, progress=None, **_):
        raise RuntimeError("GPU fell off")

    monkeypatch.setattr("veil.engine.anonymize.anonymize", broken_engine)
    key_id, job_id = _submit(svc, jpeg_bytes(), "x.jpg", credits=10)
    assert get_key(svc.db, key_id).credits == 9
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    assert report["job_status"] == 200 and "GPU fell off" in report["job_status_description"]
    assert report["credits_refunded"] == 1 and get_key(svc.db, key_id).credits == 10
    entries = ledger(svc.db, job_id=job_id)
    assert [(e.kind, e.amount) for e in entries] == [("reserve", -1), ("refund", 1)]
    assert "no fault of its input" in entries[-1].reason


def test_input_faults_are_charged_not_refunded(svc, monkeypatch):
    from veil.engine.errors import MediaError

    def picky_engine(src, dst, config, progress=None, **_):
        raise MediaError("cannot decode image, the JPEG file is corrupt or truncated")

    monkeypatch.setattr("veil.engine.anonymize.anonymize", picky_engine)
    key_id, job_id = _submit(svc, jpeg_bytes(), "x.jpg", credits=10)
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    assert report["job_status"] == 200 and "corrupt" in report["tasks"][0]["error"]
    assert report["credits_refunded"] == 0 and get_key(svc.db, key_id).credits == 9


def _copying_engine(seen: list[str]):
    def engine(src, dst, config, progress=None, **_):
        seen.append(Path(src).name)
        Path(dst).write_bytes(Path(src).read_bytes())

    return engine


def test_cancel_right_after_a_worker_claimed_the_job_refunds_everything(svc, monkeypatch):
    """The race of the attack run: the client cancels just after a worker took the job, before any file."""
    seen: list[str] = []
    monkeypatch.setattr("veil.engine.anonymize.anonymize", _copying_engine(seen))
    key_id, job_id = _submit(svc, jpeg_bytes(), "x.jpg", credits=10)
    claim = svc.leases.claim

    def claim_then_cancel(job_id: str, *args) -> bool:
        claimed = claim(job_id, *args)
        svc.cancel(key_id, job_id)  # lands while the job is `running`: the worker must notice it
        return claimed

    monkeypatch.setattr(svc.leases, "claim", claim_then_cancel)
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    assert report["state"] == "cancelled" and seen == []
    assert report["credits_refunded"] == 1 and report["credits_charged"] == 0 and get_key(svc.db, key_id).credits == 10
    entries = ledger(svc.db, job_id=job_id)
    assert [(e.kind, e.amount) for e in entries] == [("reserve", -1), ("refund", 1)]
    assert entries[-1].reason == "job cancelled: 1 of 1 files not processed"


def test_cancel_during_an_archive_keeps_only_what_the_processed_files_cost(svc, monkeypatch):
    seen: list[str] = []
    copy = _copying_engine(seen)
    members = {"a.jpg": jpeg_bytes(seed=1), "b.jpg": jpeg_bytes(seed=2), "c.jpg": jpeg_bytes(seed=3)}
    key_id, job_id = _submit(svc, _zip(members), "three.zip", credits=10)
    assert svc.get_job(job_id).reserved_credits == 3

    def cancel_during_the_first_file(src, dst, config, progress=None, **_):
        if not seen:
            svc.cancel(key_id, job_id)  # the file in progress is finished, the next ones are not started
        copy(src, dst, config, progress)

    monkeypatch.setattr("veil.engine.anonymize.anonymize", cancel_during_the_first_file)
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    # b may have run beside a (photos side by side): it is neither kept nor charged; c is never started
    assert report["state"] == "cancelled" and "a.jpg" in seen and "c.jpg" not in seen
    assert report["job_status_description"] == "cancelled by the client after 1 of 3 files"
    assert [t["status"] for t in report["tasks"]] == ["completed", "pending", "pending"]
    assert report["tasks"][0]["download_link"]  # paid for: still downloadable
    assert report["credits_charged"] == 1 and report["credits_refunded"] == 2
    assert get_key(svc.db, key_id).credits == 9
    entries = ledger(svc.db, job_id=job_id)
    assert [(e.kind, e.amount) for e in entries] == [("reserve", -3), ("refund", 2)]
    assert entries[-1].reason == "job cancelled: 2 of 3 files not processed"


@pytest.mark.parametrize(
    "members, problem", [({"inner.zip": None, "a.jpg": b"x"}, "nested"), ({"../evil.jpg": b"x"}, "..")]
)
def test_nested_archive_and_zip_slip_are_refused_before_approval(svc, members, problem):
    members = {k: (v if v is not None else _zip({"a.jpg": jpeg_bytes()})) for k, v in members.items()}
    key_id, job_id = _submit(svc, _zip(members), "set.zip")
    report = svc.report(svc.get_job(job_id))
    assert report["job_status"] == 200 and problem in report["job_status_description"].lower(), report
    assert report["credits_charged"] == 0 and get_key(svc.db, key_id).credits == 100


def test_tar_with_a_folder_is_refused(svc):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        data = jpeg_bytes()
        info = tarfile.TarInfo("photos/a.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    _, job_id = _submit(svc, out.getvalue(), "set.tar")
    report = svc.report(svc.get_job(job_id))
    assert report["job_status"] == 200 and "photos" in report["job_status_description"]


def test_restart_requeues_running_jobs_and_keeps_finished_files(svc, monkeypatch):
    seen = []

    def engine(src, dst, config, progress=None, **_):
        seen.append(Path(src).name)
        Path(dst).write_bytes(Path(src).read_bytes())

    monkeypatch.setattr("veil.engine.anonymize.anonymize", engine)
    _, job_id = _submit(svc, _zip({"a.jpg": jpeg_bytes(seed=1), "b.jpg": jpeg_bytes(seed=2)}), "two.zip")
    # Simulate a crash after a.jpg: the job is `running`, a.jpg done, b.jpg interrupted.
    from veil.jobs import runner, running

    owner = running.new_owner()
    assert svc.leases.claim(job_id, owner)

    original = runner._finish
    monkeypatch.setattr(runner, "_finish", lambda s, j: None)

    def crash_on_second(src, dst, config, progress=None, **_):
        if Path(src).name == "b.jpg":
            raise KeyboardInterrupt  # the process dies mid-file
        engine(src, dst, config, progress)

    monkeypatch.setattr("veil.engine.anonymize.anonymize", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        runner._run(svc, job_id, svc.settings.data_dir / "work" / job_id, running.JobLease(svc, job_id, owner))
    assert svc.get_job(job_id).status == "running"
    monkeypatch.setattr(runner, "_finish", original)
    monkeypatch.setattr("veil.engine.anonymize.anonymize", engine)
    seen.clear()

    worker = EmbeddedWorker(svc, concurrency=1, poll_seconds=0.05)
    worker.start()
    try:
        import time

        deadline = time.monotonic() + 30
        while svc.get_job(job_id).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    job = svc.get_job(job_id)
    assert job.status == "completed" and seen == ["b.jpg"]  # a.jpg was not redone
    assert [t.status for t in job.tasks] == ["completed", "completed"]


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_housekeeping_expires_stale_upload_sessions(svc):
    from datetime import timedelta

    from sqlalchemy import update

    from veil.db.models import Job, utcnow

    _, key = create_key(svc.db, 5)
    stale = svc.create_job(key.id, "old.jpg", 10).job
    fresh = svc.create_job(key.id, "new.jpg", 10).job
    with svc.db.begin() as session:
        session.execute(update(Job).where(Job.id == stale.id).values(created_at=utcnow() - timedelta(days=8)))
    svc.housekeeping()
    assert svc.get_job(stale.id).status == "failed" and "expired" in svc.get_job(stale.id).description
    assert svc.get_job(fresh.id).status == "created"


def test_celery_task_runs_the_same_task_function(tmp_path, monkeypatch):
    """The Celery wrapper, executed locally (`apply`, no broker): it builds the service from VEIL_* and
    processes the job with the same `process_job`."""
    import base64

    from veil.queue import celery_app

    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VEIL_STORAGE_KEY", base64.b64encode(b"k" * 32).decode())
    monkeypatch.setattr(celery_app, "_service", None)
    monkeypatch.setattr(
        "veil.engine.anonymize.anonymize",
        lambda src, dst, config, progress=None, **_: Path(dst).write_bytes(Path(src).read_bytes()),
    )
    svc = celery_app.default_service()
    try:
        _, job_id = _submit(svc, jpeg_bytes(), "x.jpg")
        celery_app.process_job_task.apply(args=[job_id]).get()
        assert svc.get_job(job_id).status == "completed"
    finally:
        svc.close()


def test_pricing_that_loses_the_race_to_a_refusal_returns_quietly(svc, monkeypatch):
    """approve() prices inline while background pricing refuses the same upload and deletes it: the
    caller that finds the blob gone must see the refusal, not a BlobNotFoundError (a 500 to the client)."""
    _, key = create_key(svc.db, 100)
    data = _zip({"../evil.jpg": b"x"})
    job = svc.create_job(key.id, "set.zip", len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    monkeypatch.setattr(svc, "_price_quietly", lambda job_id: None)  # no background pricing
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    original = svc._copy_input
    raced = []

    def copy_after_a_competing_refusal(job_row, directory):
        if not raced:
            raced.append(True)
            svc.price_job(job.id)  # the competing caller wins: job failed, input deleted
        return original(job_row, directory)

    monkeypatch.setattr(svc, "_copy_input", copy_after_a_competing_refusal)
    assert svc.approve(key.id, job.id) == "already"
    report = svc.report(svc.get_job(job.id))
    assert raced and report["job_status"] == 200 and ".." in report["job_status_description"], report
