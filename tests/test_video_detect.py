"""The video detect stage: crops around tracks between full-frame scans, slicing tiles in turn, progress."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import veil.engine.video_detect as vd
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, Detections
from veil.engine.video import Pipeline
from veil.engine.video_detect import FrameDetector, around, join

SIZE = 24  # the moving square's side


def square_clip(
    path: Path, frames: int, step: int, size: tuple[int, int] = (320, 240), newcomer: int | None = None
) -> Path:
    """A white square moving right by `step` px a frame on a grey background (30 fps); with
    `newcomer`, a second, still square appears at (220, 40) from that frame on."""
    w, h = size
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(frames):
            img = np.full((h, w, 3), 60, np.uint8)
            x = 10 + step * i
            img[100 : 100 + SIZE, x : x + SIZE] = 255
            if newcomer is not None and i >= newcomer:
                img[40 : 40 + SIZE, 220 : 220 + SIZE] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return path


def bright_box(image: np.ndarray, kinds, side=None, tiles=None) -> Detections:
    """A real (if simple) detector on pixels: a box around each blob of bright pixels in this image."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((image.min(axis=2) > 200).astype(np.uint8))
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]]
    return Detections.of_kind(boxes, [0.9] * len(boxes), FACE)


def covered(dets: Detections, x: int, y: int) -> bool:
    return any(b[0] <= x + 2 and b[1] <= y + 2 and b[2] >= x + SIZE - 2 and b[3] >= y + SIZE - 2 for b in dets.xyxy)


def test_crops_keep_a_track_between_rare_scans(tmp_path, monkeypatch):
    """Only frame 0 is a full-frame scan; the moving square is found again in crops around its
    predicted box, keeps one track and stays under its box in every frame."""
    monkeypatch.setitem(vd._SCAN_FPS, FACE, 0.01)
    src = square_clip(tmp_path / "sq.mp4", frames=60, step=3)
    seen: list[tuple[int, int]] = []

    def detector(image, kinds, side=None, tiles=None):
        seen.append(image.shape[:2])
        return bright_box(image, kinds)

    report = Pipeline(src, ModelConfig(enable_lp=False), None, detect=detector).run(None)
    assert seen[0] == (480, 640)  # the scan (upscaled to the 640 px face side)
    assert len(seen) > 3 and all(s[0] < 240 for s in seen[1:])  # then crops only
    ids = set()
    for f in report.frames:
        faces = f.detections.kind(FACE)
        assert covered(faces, 10 + 3 * f.index, 100), f"frame {f.index} uncovered"
        ids.update(faces.track_ids.tolist())
    assert ids == {1}


def test_without_crops_the_same_track_is_lost(tmp_path, monkeypatch):
    """Control for the test above: with crops that find nothing, the square is uncovered in some frames."""
    monkeypatch.setitem(vd._SCAN_FPS, FACE, 0.01)
    src = square_clip(tmp_path / "sq.mp4", frames=60, step=3)

    def scans_only(image, kinds, side=None, tiles=None):
        return bright_box(image, kinds) if image.shape[0] >= 240 else Detections()

    report = Pipeline(src, ModelConfig(enable_lp=False), None, detect=scans_only).run(None)
    assert any(not len(f.detections) for f in report.frames)


def test_gating_skips_a_still_region_yet_finds_a_newcomer_there(tmp_path, monkeypatch):
    """After the first scan, scans look only where the picture changed (and around tracks): no
    whole frame again, yet a square appearing in a still area is found, and covered from its start."""
    monkeypatch.setattr(vd, "_FULL_SCAN_FPS", 0.01)
    # 640x480: in a 320x240 frame the changed regions with their context are most of the frame, which is
    # then scanned whole.
    src = square_clip(tmp_path / "sq.mp4", frames=75, step=1, size=(640, 480), newcomer=37)
    seen: list[tuple[int, int]] = []

    def detector(image, kinds, side=None, tiles=None):
        seen.append(image.shape[:2])
        return bright_box(image, kinds)

    report = Pipeline(src, ModelConfig(enable_lp=False), None, detect=detector).run(None)
    assert seen.count((480, 640)) == 1  # one whole-frame scan (frame 0, upscaled to 640 px)
    assert max(h * w for h, w in seen[1:]) < 480 * 640 and sum(h * w for h, w in seen) < 0.5 * len(seen) * 480 * 640
    for f in report.frames:
        faces = f.detections.kind(FACE)
        assert covered(faces, 10 + f.index, 100), f"moving square uncovered in frame {f.index}"
        if f.index >= 37:
            assert covered(faces, 220, 40), f"newcomer uncovered in frame {f.index}"


@pytest.mark.parametrize("gate_max, whole_scans", [(vd._GATE_MAX, "several"), (1.0, "one")])
def test_changed_regions_covering_most_of_the_frame_get_a_whole_frame_scan(
    tmp_path, monkeypatch, gate_max, whole_scans
):
    """In a 320x240 frame two small changes with their context cover more than half of it: the scan takes
    the whole frame (the same pixels a scan sees, not an oddly cut region); control: with the limit at 1
    only the first scan is whole. Every frame stays covered either way."""
    monkeypatch.setattr(vd, "_FULL_SCAN_FPS", 0.01)
    monkeypatch.setattr(vd, "_GATE_MAX", gate_max)
    src = square_clip(tmp_path / "sq.mp4", frames=75, step=1, newcomer=37)
    seen: list[tuple[int, int]] = []

    def detector(image, kinds, side=None, tiles=None):
        seen.append(image.shape[:2])
        return bright_box(image, kinds)

    report = Pipeline(src, ModelConfig(enable_lp=False), None, detect=detector).run(None)
    whole = seen.count((480, 640))  # the 320x240 frame upscaled to the face scan's 640 px
    assert whole > 1 if whole_scans == "several" else whole == 1
    for f in report.frames:
        assert covered(f.detections.kind(FACE), 10 + f.index, 100), f"moving square uncovered in frame {f.index}"


def test_crop_regions_pad_join_and_clip():
    regions = join(
        around(np.array([[100, 100, 120, 110], [130, 100, 150, 110], [601, 11, 640, 30]]), 1.0, 96, 640, 360)
    )
    assert len(regions) == 2  # the two near boxes share one crop
    (x0, y0, x1, y1), (a0, b0, a1, b1) = sorted(regions)
    assert x0 <= 100 - 20 and x1 >= 150 + 20 and x1 - x0 >= 96
    assert a1 == 640 and b0 == 0  # clipped to the frame
    assert all(v % 2 == 0 for r in regions for v in r)


def test_slicing_runs_one_tile_per_tile_scan_in_turn():
    picks = []

    def detector(image, kinds, side=None, tiles=None):
        if tiles is not None:
            picks.append(tiles(list(range(5)))[0])
        return Detections()

    frame = av.VideoFrame.from_ndarray(np.zeros((1080, 1920, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
    config = ModelConfig(slicing=True)
    fd = FrameDetector(detector, config, (1920, 1080), 30.0, frozenset({FACE}), {FACE})
    for index in range(0, 30 * 8, fd.stride):
        fd(index, frame, lambda kind: np.zeros((0, 4)))
    assert picks == [0, 1, 2, 3, 4, 0, 1, 2]  # one tile a second (VEIL_VIDEO_TILE_FPS), in turn


def test_progress_moves_while_the_detect_stage_runs(tmp_path):
    """A frame's boxes are final only after the tracker's look-ahead, so the last stage has written
    nothing yet when the detector reaches frame 20: progress must come from the detect stage."""
    src = square_clip(tmp_path / "sq.mp4", frames=45, step=1)
    reported = threading.Event()
    values: list[float] = []
    waited: list[bool] = []

    def progress(value: float) -> None:
        values.append(value)
        if value > 0:
            reported.set()

    calls = []

    def blocking(image, kinds, side=None, tiles=None):
        calls.append(1)
        if len(calls) == 20:
            waited.append(reported.wait(20))  # the main thread must tell progress meanwhile
        return bright_box(image, kinds)

    report = Pipeline(src, ModelConfig(face_track=False, enable_lp=False), progress, detect=blocking).run(None)
    assert waited == [True]
    assert 0 < values[0] < 0.5 and values == sorted(values)
    assert report.figures["frame_count"] == 45


def test_untracked_kind_looks_only_where_the_picture_changed(tmp_path, monkeypatch):
    """Without tracking every frame still gets its own boxes, but after the first whole-frame scan the
    detector looks only at the changed parts: the still newcomer's box is kept from the frame it was
    found in, and the moving square is found in every frame."""
    monkeypatch.setattr(vd, "_FULL_SCAN_FPS", 0.01)
    src = square_clip(tmp_path / "sq.mp4", frames=60, step=2, newcomer=30)
    seen: list[tuple[int, int]] = []

    def detector(image, kinds, side=None, tiles=None):
        seen.append(image.shape[:2])
        return bright_box(image, kinds)

    report = Pipeline(src, ModelConfig(face_track=False, enable_lp=False), None, detect=detector).run(None)
    assert seen.count((480, 640)) == 1  # frame 0 only
    assert len(seen) >= 59 and sum(h * w for h, w in seen) < 0.6 * 60 * 480 * 640
    for f in report.frames:
        faces = f.detections.kind(FACE)
        assert covered(faces, 10 + 2 * f.index, 100), f"moving square missed in frame {f.index}"
        assert (f.index >= 29) == covered(faces, 220, 40), f"newcomer wrong in frame {f.index}"  # 1-frame margin
        assert (faces.track_ids == -1).all()


def test_untracked_kind_without_gating_control(tmp_path, monkeypatch):
    """Control: when the picture changes everywhere (gate off), every frame is scanned whole."""
    monkeypatch.setattr(vd, "_GATE_MAX", -1.0)
    src = square_clip(tmp_path / "sq.mp4", frames=20, step=2)
    seen: list[tuple[int, int]] = []

    def detector(image, kinds, side=None, tiles=None):
        seen.append(image.shape[:2])
        return bright_box(image, kinds)

    Pipeline(src, ModelConfig(face_track=False, enable_lp=False), None, detect=detector).run(None)
    assert seen == [(480, 640)] * 20
