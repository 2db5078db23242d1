"""Long videos in segments (`veil.engine.segments`): the stitched output is the unsplit one's (frames,
timestamps, duration, rotation, audio), plays cleanly across the cuts, and boxes near a cut are the
unsplit run's; `veil anonymize --jobs N`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from test_video import NO_MODELS, audio_packets, cut_clip, make_clip, video_frames
from veil.engine.config import ModelConfig
from veil.engine.segments import plan_segments, run_segment, stitch
from veil.engine.tracking import iou_matrix
from veil.engine.video import anonymize_video

VEIL = Path(sys.executable).parent / "veil"


def split_run(src: Path, dst: Path, config: ModelConfig, seconds: float):
    """The segments run one after the other in this process, then stitched; returns (report, segments,
    progress values told per segment)."""
    segments = plan_segments(src, config, seconds)
    told: list[list[float]] = []
    reports, parts = [], []
    for segment in segments:
        told.append([])
        part = dst.with_name(f"{dst.stem}.{segment.index}.mp4")
        reports.append(run_segment(src, segment, part, config, told[-1].append))
        parts.append(part)
    return stitch(src, parts, dst, config, reports=reports), segments, told


def clean_decode(path: Path) -> list[int]:
    """Every packet decoded with no error logged; returns the frames' pts (in presentation order)."""
    with av.logging.Capture() as logs, av.open(str(path)) as c:
        stream = c.streams.video[0]
        dts = [p.dts for p in c.demux(stream) if p.size]
        c.seek(0)
        pts = [f.pts for f in c.decode(stream)]
    assert not [m for level, _, m in logs if level <= av.logging.ERROR], logs
    assert all(a < b for a, b in zip(dts, dts[1:])), "decode timestamps must increase across the joins"
    return pts


def duration(path: Path) -> int:
    with av.open(str(path)) as c:
        return c.duration


def test_split_output_equals_unsplit_synthetic_vfr_rotation_audio(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=150, vfr=True, rotation=90, audio=True)
    whole = anonymize_video(src, tmp_path / "whole.mp4", NO_MODELS)
    report, segments, told = split_run(src, tmp_path / "split.mp4", NO_MODELS, 1.5)
    assert len(segments) >= 3
    assert video_frames(tmp_path / "split.mp4") == video_frames(tmp_path / "whole.mp4") == video_frames(src)
    assert clean_decode(tmp_path / "split.mp4") == clean_decode(tmp_path / "whole.mp4")
    assert duration(tmp_path / "split.mp4") == duration(tmp_path / "whole.mp4")
    assert audio_packets(tmp_path / "split.mp4") == audio_packets(src)
    assert [f.index for f in report.frames] == list(range(150))
    assert [f.pts for f in report.frames] == [f.pts for f in whole.frames]
    assert report.figures["rotation"] == whole.figures["rotation"] and report.figures["audio"] == "copied"
    for values in told:
        assert values == sorted(values) and values[-1] == 1.0
    # Each segment's video starts with a keyframe at its first frame's pts.
    with av.open(str(tmp_path / "split.mp4")) as c:
        keys = {float(p.pts * p.time_base) for p in c.demux(c.streams.video[0]) if p.is_keyframe}
    with av.open(str(src)) as c:
        tb = c.streams.video[0].time_base
    assert {float(s.start * tb) for s in segments} <= keys


def test_short_video_is_not_split(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=40)
    assert len(plan_segments(src, NO_MODELS, 1.0)) == 1


def test_plates_across_cuts_are_covered_as_unsplit(shared_data, detection_models, tmp_path):
    """Real footage with moving plates, cut every 2 s at keyframes: the per-frame boxes of the split run
    around each cut are the unsplit run's (a track crossing a cut is blurred on both sides)."""
    src = cut_clip(shared_data / "videos" / "intel_car-detection.mp4", tmp_path / "cars.mp4", 6.0, start=14.0,
                   gop=12)
    config = ModelConfig(enable_lp=True, lp_track=True)
    whole = anonymize_video(src, tmp_path / "whole.mp4", config)
    split, segments, _ = split_run(src, tmp_path / "split.mp4", config, 2.0)
    assert len(segments) == 3
    with av.open(str(src)) as c:
        keys = {p.pts for p in c.demux(c.streams.video[0]) if p.is_keyframe}
    assert {s.start for s in segments} <= keys  # cut at the source's keyframes
    assert clean_decode(tmp_path / "split.mp4") == clean_decode(tmp_path / "whole.mp4")
    assert duration(tmp_path / "split.mp4") == duration(tmp_path / "whole.mp4")
    assert audio_packets(tmp_path / "split.mp4") == audio_packets(src)
    assert [(f.index, f.pts) for f in split.frames] == [(f.index, f.pts) for f in whole.frames]
    crossing = 0
    for segment in segments[1:]:
        cut = sum(s.frames for s in segments[:segment.index])
        if len(whole.frames[cut - 1].detections) and len(whole.frames[cut].detections):
            crossing += 1
        for i in range(max(0, cut - 12), min(len(whole.frames), cut + 12)):
            a, b = whole.frames[i].detections, split.frames[i].detections
            assert len(a) == len(b), f"frame {i} near the cut at {cut}: {len(a)} boxes unsplit, {len(b)} split"
            if len(a):
                assert (iou_matrix(a.xyxy, b.xyxy).max(axis=1) > 0.9).all(), f"frame {i}"
    assert crossing, "the clip must have a plate on both sides of a cut"


def test_cli_jobs_splits_a_long_video(tmp_path):
    src = make_clip(tmp_path / "long.mp4", frames=120, audio=True)
    env = {**os.environ, "VEIL_VIDEO_SEGMENT_SECONDS": "1.5", "PYTHONFAULTHANDLER": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        run = subprocess.Popen([str(VEIL), "anonymize", str(src), "--no-blur-face", "--jobs", "2", "-o",
                                str(tmp_path / "out")], stdout=err, stderr=err, env=env, start_new_session=True)
        try:
            assert run.wait(120) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGABRT)  # the worker processes too; their stacks go to the log
            run.wait(10)
            raise AssertionError("veil anonymize --jobs 2 hung:\n" + log.read_text()[-8000:]) from None
    out = tmp_path / "out" / "long.mp4"
    assert video_frames(out) == video_frames(src)
    assert audio_packets(out) == audio_packets(src)
    clean_decode(out)
    assert not [p for p in out.parent.iterdir() if p.name != "long.mp4"]  # no segment files left
