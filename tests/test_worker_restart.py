"""Jobs survive a crash: a real `veil serve` is killed with SIGKILL while it anonymizes a video, started
again on the same data dir, and the job then completes with a complete output (nothing reported done
before it is)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
import requests

from _service_helpers import assert_charged_once

pytestmark = pytest.mark.slow
CLIP_FRAMES = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _veil(*args: str) -> list[str]:
    return [sys.executable, "-m", "veil.cli", *args]


def _start(data: Path, port: int, log: Path) -> subprocess.Popen:
    out = log.open("ab")
    proc = subprocess.Popen(
        _veil("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"veil serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"veil serve not ready:\n{log.read_text()[-3000:]}")


def _clip(source: Path, dst: Path) -> Path:
    with av.open(str(source)) as inp, av.open(str(dst), "w") as out:
        src = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = src.width, src.height, "yuv420p"
        for i, frame in enumerate(inp.decode(src)):
            if i >= CLIP_FRAMES:
                break
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode())
    return dst


def _report(api: str, key: str, job_id: str) -> dict:
    r = requests.get(f"{api}/job_result/{job_id}", headers={"access_token": key}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_kill_mid_video_then_restart_completes_the_job(tmp_path, shared_data, detection_models):
    data, log, port = tmp_path / "data", tmp_path / "serve.log", _free_port()
    created = subprocess.run(
        _veil("keys", "create", "--credits", "100", "--data-dir", str(data)), capture_output=True, text=True, check=True
    )
    key = created.stdout.strip().splitlines()[-1]
    api = f"http://127.0.0.1:{port}/v1"
    clip = _clip(shared_data / "videos" / "intel_car-detection.mp4", tmp_path / "clip.mp4")
    body = clip.read_bytes()

    proc = _start(data, port, log)
    try:
        r = requests.post(
            f"{api}/create_upload_session",
            headers={"access_token": key},
            timeout=10,
            json={
                "file_name": "clip.mp4",
                "file_size": len(body),
                "content_type": "octet-stream",
                "model": "blur",
                "model_config": {"blur_face": True},
            },
        )
        assert r.status_code == 200, r.text
        uri, job_id = r.json()["session_uri"], r.json()["job_id"]
        block = base64.urlsafe_b64encode((0).to_bytes(4, "big")).decode()
        assert requests.put(uri + "&comp=block&blockid=" + block, data=body, timeout=60).status_code == 201
        assert (
            requests.put(
                uri + "&comp=blocklist", data=f"<BlockList><Latest>{block}</Latest></BlockList>", timeout=60
            ).status_code
            == 201
        )
        deadline = time.monotonic() + 60
        while (
            status := requests.post(
                f"{api}/approve_job/{job_id}", headers={"access_token": key}, timeout=10
            ).status_code
        ) == 302 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            report = _report(api, key, job_id)
            assert report["job_status"] < 100, "finished before it could be interrupted; use a longer clip"
            if 0 < report["job_status"] < 100:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the job never started:\n{log.read_text()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    proc = _start(data, port, log)
    try:
        deadline = time.monotonic() + 420
        while (report := _report(api, key, job_id))["job_status"] not in (100, 200):
            assert time.monotonic() < deadline, f"not finished after restart:\n{log.read_text()[-3000:]}"
            # no link to an unfinished output (the task is recorded completed a moment before the job is)
            assert all(t["download_link"] is None or t["status"] == "completed" for t in report["tasks"]), report
            time.sleep(0.5)
        assert report["job_status"] == 100, report
        (task,) = report["tasks"]
        assert task["status"] == "completed" and task["output_file"] == "clip_anonymized.mp4"
        out = tmp_path / task["output_file"]
        with requests.get(task["download_link"], stream=True, timeout=60) as r:
            r.raise_for_status()
            out.write_bytes(r.content)
        with av.open(str(out)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames == CLIP_FRAMES
        assert report["credits_charged"] == report["job_total_credit_cost"]
        assert_charged_once(f"sqlite:///{data / 'veil.db'}", job_id, 100)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
