"""Videos that break assumptions (issue 22 items 3 and 5): a picture size that changes mid-stream (two
recordings joined) and broken timestamps (38 frames within 3 ms). Clips are built here with PyAV."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

import veil.engine.video_detect as vd
from test_video import make_clip
from veil.engine.config import ModelConfig
from veil.engine.detections import PLATE, Detections
from veil.engine.video import Pipeline

VEIL = Path(sys.executable).parent / "veil"


def joined_clip(tmp_path: Path) -> Path:
    """Two MPEG-TS recordings of different sizes, joined byte for byte (as `cat a.ts b.ts` does)."""
    first = make_clip(tmp_path / "a.ts", frames=20, size=(160, 120))
    second = make_clip(tmp_path / "b.ts", frames=20, size=(192, 144))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    return joined


def burst_clip(path: Path, frames: int = 38, images: list[np.ndarray] | None = None) -> Path:
    """An MP4 whose frames are 7/90000 s apart: 38 frames within 3 ms (a broken muxer's timestamps). Its
    pictures are `images` (RGB) if given, else flat grey levels of 160 x 120."""
    pictures = images or [np.full((120, 160, 3), 4 * i, np.uint8) for i in range(frames)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = pictures[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 90000)
        stream.codec_context.options = {"crf": "12", "preset": "ultrafast"}  # near-lossless: plates stay readable
        for i, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = 7 * i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def real_frames(src: Path, start: float, count: int) -> list[np.ndarray]:
    """`count` decoded frames (RGB) of a real clip from `start` seconds."""
    pictures: list[np.ndarray] = []
    with av.open(str(src)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= start:
                pictures.append(frame.to_ndarray(format="rgb24"))
                if len(pictures) == count:
                    break
    assert len(pictures) == count
    return pictures


def nothing(image, kinds, side=None, tiles=None) -> Detections:
    return Detections()


def test_a_size_change_mid_stream_is_scaled_to_the_first_size_and_said(tmp_path):
    src = joined_clip(tmp_path)
    report = Pipeline(src, ModelConfig(), None, detect=nothing).run(tmp_path / "out.ts")
    assert len(report.frames) == 40
    assert any("picture size changes at frame 20" in note for note in report.notes), report.notes
    with av.open(str(tmp_path / "out.ts")) as out:
        assert {(f.width, f.height) for f in out.decode(video=0)} == {(160, 120)}


def test_veil_anonymize_processes_a_joined_recording_without_a_traceback(detection_models, tmp_path):
    src = joined_clip(tmp_path)
    result = subprocess.run(
        [str(VEIL), "anonymize", str(src), str(tmp_path / "a.ts"), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "note: the picture size changes at frame 20 (192 x 144, first 160 x 120)" in result.stdout
    with av.open(str(tmp_path / "out" / "joined.ts")) as out:
        assert sum(1 for _ in out.decode(video=0)) == 40


def test_broken_timestamps_schedule_detection_by_frame_counts_and_say_so(tmp_path):
    """By its timestamps the clip runs at over 1000 frames a second, so plates (scanned for a few times a
    second of video) would be looked for on frame 0 only; by frame counts, as at 30 frames a second."""
    src = burst_clip(tmp_path / "burst.mp4")
    looked: list[int] = []

    def count(image, kinds, side=None, tiles=None) -> Detections:
        looked.append(1)
        return Detections()

    report = Pipeline(src, ModelConfig(blur_face=False, enable_lp=True, lp_track=True), None, detect=count).run(None)
    assert len(report.frames) == 38
    assert len(looked) >= 38 // round(30 / vd._SCAN_FPS[PLATE]) > 1  # no tracks: scans only, no crops
    assert any(note.startswith("broken timestamps") and "frame counts" in note for note in report.notes)


def test_veil_says_broken_timestamps_in_its_json_and_report_and_still_finds_tracked_plates(
    shared_data, detection_models, tmp_path
):
    """38 frames of the dev parking-lot clip (cars with readable plates) stamped 7/90000 s apart, through the
    real `veil` command with plates tracked: `detect --json -` and `anonymize --report` both carry the note,
    and plates are found on every frame, several a frame (with detection scheduled by the broken timestamps,
    over 1000 frames a second by them, only frame 0 was scanned: one plate a frame, carried by the tracker)."""
    pictures = real_frames(shared_data / "videos" / "intel_car-detection.mp4", 15.5, 38)
    src = burst_clip(tmp_path / "burst.mp4", images=pictures)
    plates = ("--no-blur-face", "--enable-lp", "--lp-track")
    detect = subprocess.run(
        [str(VEIL), "detect", str(src), "--json", "-", *plates], capture_output=True, text=True, timeout=300
    )
    assert detect.returncode == 0, detect.stderr
    [item] = json.loads(detect.stdout)["items"]
    assert any(n.startswith("broken timestamps") and "frame counts" in n for n in item["notes"]), item
    assert len(item["frames"]) == 38
    per_frame = [len(f["plates"]) for f in item["frames"]]
    assert min(per_frame) >= 1 and sum(per_frame) >= 3 * 38, per_frame
    assert all(len(f["plates"]) == len(f["plate_tracks"]) and -1 not in f["plate_tracks"] for f in item["frames"])

    report = tmp_path / "report.json"
    anonymize = subprocess.run(
        [str(VEIL), "anonymize", str(src), "-o", str(tmp_path / "out"), "--report", str(report), *plates],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert anonymize.returncode == 0, anonymize.stderr
    [summary] = json.loads(report.read_text())["files"]
    assert summary["notes"] == item["notes"]
    assert summary["plates"]["frames"] == 38 and summary["plates"]["regions"] >= 3 * 38, summary
    assert summary["plates"]["tracks"] >= 2


def test_the_service_processes_a_joined_recording_and_says_so(tmp_path, detection_models):
    """The joined .ts through the service's own worker path (upload, approve, `process_job`): the job
    completes (not "internal error: ValueError") with the size change noted in the task's report, in
    job_result and on the admin panel's job page; the output has every frame at the first size."""
    from fastapi.testclient import TestClient

    from _service_helpers import new_key, seed_upload, settings_for
    from test_admin_auth import PASSWORD, _sign_in
    from veil.api.app import create_app
    from veil.jobs.runner import process_job

    (tmp_path / "clips").mkdir()
    data = joined_clip(tmp_path / "clips").read_bytes()
    app = create_app(settings_for(tmp_path / "service", admin_email="ops@example.com", admin_password=PASSWORD))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        key = new_key(app.state.service, credits=100)
        r = http.post(
            "/v1/create_upload_session",
            headers={"access_token": key},
            json={"file_name": "joined.ts", "file_size": len(data), "model_config": {"enable_lp": False}},
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        seed_upload(http, r.json()["session_uri"], data)
        assert http.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}).status_code == 200
        process_job(job_id, app.state.service)
        result = http.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
        assert result["job_status"] == 100, result["job_status_description"]
        [task] = result["tasks"]
        assert task["status"] == "completed" and not task["error"], task
        note = "the picture size changes at frame 20 (192 x 144, first 160 x 120)"
        assert any(note in n for n in task["report"]["notes"]), task["report"]
        output = tmp_path / "output.ts"
        output.write_bytes(http.get(task["download_link"]).content)
        with av.open(str(output)) as out:
            assert [(f.width, f.height) for f in out.decode(video=0)] == [(160, 120)] * 40
        assert _sign_in(http, next_page=f"/admin/jobs/{job_id}").status_code == 303
        page = http.get(f"/admin/jobs/{job_id}").text
        assert f"note: {note}" in page
