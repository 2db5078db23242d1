"""A video is priced on the work it takes, whatever its header claims, and the worker does no more than was priced;
a video whose few frames are spread over hours is not split into hundreds of segments (issue 18, findings 1-2)."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from test_video import NO_MODELS, make_clip
from veil.engine.config import MediaLimits
from veil.engine.errors import MediaError
from veil.engine.probe import probe
from veil.engine.segments import MAX_SEGMENTS, plan_segments
from veil.engine.video import anonymize_video
from veil.jobs.pricing import cost_of


def _mkv(path: Path, frames: int, time_base: Fraction, step: int = 1, rate: int = 1) -> Path:
    """A tiny H.264 Matroska file of `frames` frames, `step` ticks of `time_base` apart."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = time_base
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * step, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _lie_about_duration(path: Path, milliseconds: float) -> Path:
    """Rewrite the Matroska Segment Info's Duration element (ID 0x4489, an 8-byte float of timecode-scale
    ticks: milliseconds by default)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    assert at > 0, "no 8-byte Duration element"
    data[at + 3 : at + 11] = struct.pack(">d", milliseconds)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def liar(tmp_path_factory) -> Path:
    """130 frames at 1 fps (130 s) whose header says 1 s."""
    path = _mkv(tmp_path_factory.mktemp("liar") / "liar.mkv", 130, Fraction(1, 1))
    return _lie_about_duration(path, 1000.0)


def test_a_header_that_understates_the_duration_is_not_believed(liar):
    with av.open(str(liar)) as container:  # control: the header really says 1 s
        assert container.duration / av.time_base == pytest.approx(1.0, abs=0.01)
    info = probe(liar)
    assert info.frames == 130
    assert info.seconds == pytest.approx(130, abs=1)
    assert cost_of(liar) == 15  # 3 started minutes at 5 credits (the header alone gave 5)


def test_frames_crammed_into_a_second_are_priced_by_their_count(tmp_path):
    dense = _mkv(tmp_path / "dense.mkv", 3700, Fraction(1, 3600), rate=3600)  # 3,700 frames in about 1 s
    info = probe(dense)
    assert info.seconds < 2 and info.frames == 3700
    assert cost_of(dense) == 10  # 3,700 frames at 60 fps: 61.7 s, 2 started minutes
    control = make_clip(tmp_path / "normal.mp4", frames=60)  # 2 s at 30 fps: 1 minute
    assert cost_of(control) == 5


def test_the_engine_decodes_no_more_frames_than_were_priced(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=30)
    with pytest.raises(MediaError, match="more than the 20 frames it was priced for"):
        anonymize_video(src, tmp_path / "out.mp4", NO_MODELS, limits=MediaLimits(max_video_frames=20))
    assert not (tmp_path / "out.mp4").exists()
    report = anonymize_video(src, tmp_path / "ok.mp4", NO_MODELS, limits=MediaLimits(max_video_frames=30))
    assert len(report.frames) == 30  # control: a budget that covers the video changes nothing


def _run_job(tmp_path, data: bytes, name: str):
    """A job for `data` through the service's embedded worker; returns (service, key id, job id, process_job)."""
    from _service_helpers import settings_for
    from veil.jobs.keys import create_key
    from veil.jobs.runner import process_job
    from veil.jobs.service import INPUT_CONTAINER, build_service

    svc = build_service(settings_for(tmp_path / "data"))
    _, key = create_key(svc.db, 100)
    job = svc.create_job(key.id, name, len(data), model_config={"blur_face": False}).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) == "approved"
    return svc, key.id, job.id, process_job


def test_the_service_charges_the_real_length_of_a_lying_video(tmp_path, liar):
    from veil.jobs.keys import get_key

    svc, key_id, job_id, process_job = _run_job(tmp_path, liar.read_bytes(), "liar.mkv")
    assert svc.get_job(job_id).total_cost == 15
    process_job(job_id, svc)
    job = svc.get_job(job_id)
    assert job.status == "completed", job.status_description
    assert get_key(svc.db, key_id).credits == 85  # charged the 15 it cost, once


def test_the_worker_refuses_frames_beyond_what_was_priced(tmp_path, liar, monkeypatch):
    """Should the worker's count of the frames ever fall short of the video (here: forced to 100 of its
    130), the engine stops there: no output, the job fails naming the reason."""
    from veil.engine import probe as probe_module

    svc, key_id, job_id, process_job = _run_job(tmp_path, liar.read_bytes(), "liar.mkv")
    extent = probe_module._packet_extent
    monkeypatch.setattr(probe_module, "_packet_extent", lambda path, limits: (100, extent(path, limits)[1]))
    process_job(job_id, svc)
    job = svc.get_job(job_id)
    assert job.status == "failed"
    assert "more than the 100 frames it was priced for" in job.tasks[0].error
    assert job.tasks[0].output_blob is None


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> Path:
    """3,600 frames spread over 10 hours (one every 10 s), header 1 s: finding 2's file, smaller."""
    path = _mkv(tmp_path_factory.mktemp("sparse") / "sparse.mkv", 3600, Fraction(1, 10), step=100)
    return _lie_about_duration(path, 1000.0)


def test_few_frames_over_hours_get_few_segments(sparse):
    assert probe(sparse).seconds == pytest.approx(36000, abs=20)
    unbounded = plan_segments(sparse, NO_MODELS, 60.0)  # the CLI's plan: only the hard cap
    assert len(unbounded) == MAX_SEGMENTS  # 600 at 60 s before the cap
    plan = plan_segments(sparse, NO_MODELS, 60.0, max_overhead=0.25)  # the service's plan
    written = sum(s.frames for s in plan)
    analysed = sum(s.analysed for s in plan)
    assert written == 3600
    assert 2 <= len(plan) < len(unbounded)
    assert analysed <= 1.25 * written  # was 21,536 analysed for 3,600 written
    assert [s.index for s in plan] == list(range(len(plan)))
