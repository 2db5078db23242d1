"""Photos of an archive job run side by side, one core each (`veil.jobs.runner._Ahead`): same outputs and charges
as one at a time, a bad photo fails only itself, and a cancel charges only what was finished."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from _service_helpers import jpeg_bytes, settings_for
from veil.engine.runtime import thread_count
from veil.jobs import runner
from veil.jobs.keys import create_key, get_key
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, build_service


@pytest.fixture()
def svc(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "physical_cores", lambda: 2)  # the same on any test machine
    service = build_service(settings_for(tmp_path))
    yield service
    service.close()


def _submit(svc, members: dict[str, bytes], credits: int = 100) -> tuple[str, str]:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    data = out.getvalue()
    _, key = create_key(svc.db, credits)
    job = svc.create_job(key.id, "photos.zip", len(data)).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) == "approved"
    return key.id, job.id


def _recording_engine(calls: list):
    """Copies the photo after a short wait, recording (name, start, end, session threads)."""

    def engine(src, dst, config, progress=None, **_):
        start = time.monotonic()
        time.sleep(0.3)
        Path(dst).write_bytes(Path(src).read_bytes())
        calls.append((Path(src).name, start, time.monotonic(), thread_count(), threading.current_thread().name))

    return engine


def test_photos_of_an_archive_run_side_by_side_on_one_thread_each(svc, monkeypatch):
    calls: list = []
    monkeypatch.setattr("veil.engine.anonymize.anonymize", _recording_engine(calls))
    key_id, job_id = _submit(svc, {f"{n}.jpg": jpeg_bytes(seed=n) for n in range(4)})
    process_job(job_id, svc)
    job = svc.get_job(job_id)
    assert job.status == "completed" and [t.status for t in job.tasks] == ["completed"] * 4
    assert sorted(name for name, *_ in calls) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert {threads for *_, threads, _ in calls} == {1}  # each photo's sessions on one thread
    spans = sorted((start, end) for _, start, end, *_ in calls)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # they overlapped
    assert get_key(svc.db, key_id).credits == 96 and job.refunded_credits == 0
    for task in job.tasks:  # each output is its own photo's
        with svc.store.open_read(OUTPUT_CONTAINER, task.output_blob) as f:
            assert f.read() == jpeg_bytes(seed=int(task.input_name.split(".")[0]))


def test_one_photo_at_a_time_where_the_worker_has_one_core(svc, monkeypatch):
    calls: list = []
    monkeypatch.setattr(runner, "physical_cores", lambda: 1)
    monkeypatch.setattr("veil.engine.anonymize.anonymize", _recording_engine(calls))
    _, job_id = _submit(svc, {f"{n}.jpg": jpeg_bytes(seed=n) for n in range(3)})
    process_job(job_id, svc)
    assert svc.get_job(job_id).status == "completed"
    spans = [(start, end) for _, start, end, *_ in calls]
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    assert {name for *_, name in calls} == {threading.current_thread().name}


def test_a_bad_photo_beside_good_ones_fails_only_itself(svc, monkeypatch):
    from veil.engine.errors import MediaError

    copy = _recording_engine([])

    def engine(src, dst, config, progress=None, **kw):
        if Path(src).name == "1.jpg":
            raise MediaError("cannot decode image, the JPEG file is corrupt or truncated")
        copy(src, dst, config, progress, **kw)

    monkeypatch.setattr("veil.engine.anonymize.anonymize", engine)
    key_id, job_id = _submit(svc, {f"{n}.jpg": jpeg_bytes(seed=n) for n in range(3)})
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    assert [t["status"] for t in report["tasks"]] == ["completed", "failed", "completed"]
    assert "corrupt" in report["tasks"][1]["error"] and report["job_status"] == 100


def test_a_cancel_leaves_the_photo_running_beside_unfinished_and_uncharged(svc, monkeypatch):
    key_id = job_id = None
    copy = _recording_engine([])

    def engine(src, dst, config, progress=None, **kw):
        if Path(src).name == "0.jpg":
            svc.cancel(key_id, job_id)  # while 1.jpg runs beside it
        copy(src, dst, config, progress, **kw)

    monkeypatch.setattr("veil.engine.anonymize.anonymize", engine)
    key_id, job_id = _submit(svc, {f"{n}.jpg": jpeg_bytes(seed=n) for n in range(4)}, credits=10)
    process_job(job_id, svc)
    report = svc.report(svc.get_job(job_id))
    assert report["state"] == "cancelled"
    assert [t["status"] for t in report["tasks"]] == ["completed", "pending", "pending", "pending"]
    assert report["credits_charged"] == 1 and get_key(svc.db, key_id).credits == 9
    assert not list((svc.settings.data_dir / "work").rglob("*.jpg"))  # nothing left behind


@pytest.mark.usefixtures("detection_models")
def test_side_by_side_finds_what_one_at_a_time_finds(svc, shared_data, monkeypatch):
    # The real engine on real photos: sessions on one thread each give the same detections as the default ones.
    photos = sorted((shared_data / "facemask_faces" / "images").glob("*"))[:4]
    members = {p.name: p.read_bytes() for p in photos}
    counts = {}
    for cores in (2, 1):
        monkeypatch.setattr(runner, "physical_cores", lambda cores=cores: cores)
        _, job_id = _submit(svc, members)
        process_job(job_id, svc)
        job = svc.get_job(job_id)
        assert job.status == "completed"
        counts[cores] = [t.detections for t in sorted(job.tasks, key=lambda t: t.index)]
        for task in job.tasks:
            with svc.store.open_read(OUTPUT_CONTAINER, task.output_blob) as f:
                assert Image.open(io.BytesIO(f.read())).size == Image.open(io.BytesIO(members[task.input_name])).size
    assert counts[2] == counts[1] and sum(counts[1]) > 0, counts
