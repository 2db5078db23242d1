"""Issue 22 item 8: graceful shutdown. `veil serve`'s embedded worker lets the file in progress finish within
VEIL_SHUTDOWN_GRACE_SECONDS and starts no other; a file that cannot finish is handed back at once (lease
released, job queued, logged) and resumed on the next start, the job's progress never moving backwards.
(`veil worker` with two workers: tests/test_scaleout.py.)"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
import types

import pytest
import requests

import seed_client
from _service_helpers import assert_charged_once, settings_for
from test_health_metrics import hold_engine_at_half
from test_scaleout import _clip as _looped_clip
from test_scaleout import _submit
from test_video import make_clip
from test_worker import _submit as submit_in_process
from test_worker import _zip
from test_worker_restart import _free_port, _report, _start, _veil
from veil.jobs.service import build_service
from veil.queue.embedded import EmbeddedWorker

pytestmark = pytest.mark.slow


def _wait(until, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_file_in_progress_finishes_and_no_other_starts(tmp_path, detection_models, monkeypatch, caplog):
    """Two videos in a zip; shutdown begins halfway through the first, with time enough for it to finish."""
    clips = {f"{n}.mp4": make_clip(tmp_path / f"{n}.mp4", frames=30).read_bytes() for n in "ab"}
    halfway, go_on = hold_engine_at_half(monkeypatch)
    svc = build_service(settings_for(tmp_path / "data"))
    try:
        key_id, job_id = submit_in_process(svc, _zip(clips), "two.zip")
        worker = EmbeddedWorker(svc, poll_seconds=0.05)
        worker.start()
        assert halfway.wait(120)
        stopping = threading.Thread(target=worker.stop, args=(120,))
        with caplog.at_level(logging.INFO, logger="veil"):
            stopping.start()
            _wait(lambda: worker._drain.requested)
            go_on.set()  # the first file goes on to its end, within the grace period
            stopping.join(180)
        assert not stopping.is_alive()
        job = svc.get_job(job_id)
        by_name = {t.input_name: t.status for t in job.tasks}
        assert by_name == {"a.mp4": "completed", "b.mp4": "pending"}, by_name
        assert job.status == "queued" and job.lease_owner is None and job.progress == pytest.approx(0.5)
        assert svc.report(job)["job_status"] == 50  # handed back, its progress kept
        assert f"job {job_id}: handed back at shutdown with 1 of 2 files unfinished" in caplog.text

        worker = EmbeddedWorker(svc, poll_seconds=0.05)  # the next start resumes it at the second file
        worker.start()
        _wait(lambda: svc.get_job(job_id).status == "completed")
        worker.stop(5)
        assert_charged_once(svc.db, job_id, 100)
    finally:
        svc.close()


def test_sigterm_to_veil_serve_hands_the_job_back_and_progress_never_falls(
    tmp_path, shared_data, detection_models, monkeypatch
):
    """A grace period too short for the video: the job is handed back at once, logged, and the next start
    resumes it; the progress clients see never moves backwards."""
    data, log, port = tmp_path / "data", tmp_path / "serve.log", _free_port()
    key = subprocess.run(
        _veil("keys", "create", "--credits", "100", "--data-dir", str(data)), capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    api, seen = f"http://127.0.0.1:{port}/v1", []
    monkeypatch.setenv("VEIL_SHUTDOWN_GRACE_SECONDS", "0")
    monkeypatch.setattr(seed_client, "API_URL", api)
    # 900 frames (the test video played again): at 10 % there are seconds of work left even on a fast, idle
    # machine, where the 150-frame clip was done 0.1 s after the signal, before the drain began
    clip = _looped_clip(shared_data, tmp_path / "clip.mp4", 900, loop=True)

    proc = _start(data, port, log)
    try:
        job_id = _submit(types.SimpleNamespace(api_url=api), key, clip)
        _wait(lambda: seen.append(_report(api, key, job_id)["job_status"]) or 10 <= seen[-1], 300)
        assert seen[-1] < 100, "finished before it could be interrupted; use a longer clip"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once it shut down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    first_run = log.read_text()
    assert f"job {job_id}: handed back at shutdown with 1 of 1 files unfinished" in first_run, first_run[-3000:]

    from veil.db.models import Job
    from veil.db.session import open_database

    engine, db = open_database(f"sqlite:///{data / 'veil.db'}")
    with db() as session:
        job = session.get(Job, job_id)
        assert job.status == "queued" and job.lease_owner is None and job.progress * 100 >= seen[-1]
    engine.dispose()

    proc = _start(data, port, log)
    try:
        _wait(lambda: seen.append(_report(api, key, job_id)["job_status"]) or seen[-1] in (100, 200), 420)
        with requests.get(_report(api, key, job_id)["tasks"][0]["download_link"], timeout=60) as r:
            assert r.status_code == 200 and len(r.content) > 1000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert seen[-1] == 100
    assert seen == sorted(seen), seen  # never backwards, across the shutdown and the resumed run
    assert_charged_once(f"sqlite:///{data / 'veil.db'}", job_id, 100)
