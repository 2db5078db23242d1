"""A review-mode job makes its videos' review copies while it detects them (issue 21): the review page's
frames come from the stored copy from the first request (the panel makes none of its own), frame i of the
copy is frame i of the video, and the copy lives and dies with the job's other files. A video whose
keyframes lie close together gets none (frames from the video itself are quick enough); nor does a job that
is not in review mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _service_helpers import new_key, settings_for
from test_admin_auth import PASSWORD, _sign_in
from test_review_service import _job
from veil.api.app import create_app
from veil.api.panel import review
from veil.engine import review_copy
from veil.jobs.names import OUTPUT_CONTAINER
from veil.jobs.runner import process_job

FRAMES = 260


def _clip(path, keyframes_every: int) -> bytes:
    """FRAMES frames of 640×360; frame i shows a white bar from column 2i."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"g": str(keyframes_every), "keyint_min": str(keyframes_every), "crf": "18"}
        for i in range(FRAMES):
            picture = np.zeros((360, 640, 3), np.uint8)
            picture[:, 2 * i : 2 * i + 8] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    return path.read_bytes()


def _bar(jpeg: bytes) -> int:
    columns = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32).mean(axis=0)
    return int(np.flatnonzero(columns > 128)[0]) // 2


@pytest.fixture()
def panel(tmp_path, detection_models):
    app = create_app(settings_for(tmp_path, admin_email="ops@example.com", admin_password=PASSWORD))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        http.svc = app.state.service
        assert _sign_in(http, next_page="/admin/jobs").status_code == 303
        yield http


def _video_job(http, key: str, data: bytes, config: dict) -> str:
    job_id = _job(http, key, data, config, file_name="clip.mp4")
    process_job(job_id, http.svc)
    return job_id


def test_a_review_job_stores_its_videos_review_copy_and_the_page_serves_frames_from_it(panel, tmp_path, monkeypatch):
    monkeypatch.setattr(review_copy, "COPY_CHUNK", 100)  # the copy in three files: 0-99, 100-199, 200-259
    key = new_key(panel.svc, credits=100)
    job_id = _video_job(panel, key, _clip(tmp_path / "sparse.mp4", 250), {"review": True, "enable_lp": False})
    task = panel.svc.get_job(job_id).tasks[0]
    assert panel.svc.get_job(job_id).status == "awaiting_review"
    assert [name.rsplit("/", 1)[1] for name in task.review_copy] == ["0.mp4", "1.mp4", "2.mp4"]
    stored = set(panel.svc.store.list(OUTPUT_CONTAINER, f"{job_id}/"))
    assert stored == {task.detections_blob, *task.review_copy}

    copies_before = len(review._frames._proxies)
    for frame in [240, 3, 120, 119, 259, 0, 200]:  # far jumps, both ways, across the copy's files
        r = panel.get(f"/admin/jobs/{job_id}/review/0/before.jpg", params={"frame": frame, "side": 640})
        assert r.status_code == 200 and _bar(r.content) == frame
    assert len(review._frames._proxies) == copies_before  # the panel made no copy of its own

    assert panel.post(f"/v1/render_job/{job_id}", headers={"access_token": key}, json={}).status_code == 202
    process_job(job_id, panel.svc)
    task = panel.svc.get_job(job_id).tasks[0]
    assert task.status == "completed" and task.review_copy  # the render keeps the copy (the video is the same)
    assert set(panel.svc.store.list(OUTPUT_CONTAINER, f"{job_id}/")) == set(task.stored())
    r = panel.delete(f"/v1/jobs/{job_id}/files", headers={"access_token": key})
    assert r.status_code == 200, r.text
    assert not panel.svc.store.list(OUTPUT_CONTAINER, f"{job_id}/")  # the copy went with the other files


def test_no_review_copy_where_keyframes_are_close_or_the_job_is_not_reviewed(panel, tmp_path):
    key = new_key(panel.svc, credits=100)
    close = _video_job(panel, key, _clip(tmp_path / "dense.mp4", 25), {"review": True, "enable_lp": False})
    assert panel.svc.get_job(close).tasks[0].review_copy is None
    plain = _video_job(panel, key, _clip(tmp_path / "sparse.mp4", 250), {"enable_lp": False})
    task = panel.svc.get_job(plain).tasks[0]
    assert task.status == "completed" and task.review_copy is None and task.detections_blob
