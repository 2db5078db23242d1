"""Lead and bridge boxes that fit (`veil.engine.tracking.lead_box`): before a track's first detection and
across its gaps a box keeps the size of the detections it comes from plus the motion margin, stays
inside the frame, and at an edge covers only where the object can be."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.tracking import TrackingParams, VideoTracker

SIZE = (640, 480)


def _run(dets: dict[int, Detections], frames: int, params: TrackingParams) -> dict[int, Detections]:
    vt = VideoTracker(params, SIZE, {FACE: 0.5, PLATE: 0.5})
    out = []
    for i in range(frames):
        out += vt.push(i, dets.get(i, Detections()))
    return dict(out + vt.flush())


def _covered(box, inner) -> float:
    w = max(0.0, min(box[2], inner[2]) - max(box[0], inner[0]))
    h = max(0.0, min(box[3], inner[3]) - max(box[1], inner[1]))
    return w * h / ((inner[2] - inner[0]) * (inner[3] - inner[1]))


def test_lead_box_of_a_plate_entering_at_the_bottom_edge():
    """A 40x20 plate drives in from the bottom edge at 8 px a frame; the detector first finds it at
    frame 10, whole. Before that the boxes lie between where it was found and the edge (inside the
    frame), keep its width plus the margin (no box grown from its size), and cover its visible part."""

    def plate(i: int) -> list[float]:
        y = 400 - 8 * (i - 10)
        return [300.0, y, 340.0, y + 20]

    params = TrackingParams(lead=12, grow=0.08)
    dets = {i: Detections.of_kind([np.clip(plate(i), 0, 480)], [0.9], PLATE) for i in range(10, 40)}
    out = _run(dets, 40, params)
    first = plate(10)
    for i in range(0, 10):
        boxes = out[i].kind(PLATE).xyxy
        x1, y1, x2, y2 = plate(i)
        if y1 >= SIZE[1]:  # not in the frame yet: nothing to cover, and a box would only be margin
            assert len(boxes) <= 1
            continue
        assert len(boxes) == 1, f"frame {i}"
        b = boxes[0]
        assert 0 <= b[0] and b[2] <= SIZE[0] and 0 <= b[1] and b[3] <= SIZE[1], f"frame {i}: {b}"
        assert b[2] - b[0] <= 1.5 * 40 + 1e-3, f"frame {i}: wider than the plate and its margin"
        assert b[1] >= first[1] - 0.25 * 20 - 1e-3, f"frame {i}: above where the plate was found"
        assert _covered(b, [x1, y1, x2, min(y2, SIZE[1])]) >= 0.99, f"frame {i}: plate uncovered"


def test_bridge_box_at_the_frame_edge_keeps_the_detections_size():
    """A face entering at the right edge at 4 px a frame, cut by it (18 px of it seen at frame 2), missed
    in frames 3-7, found again at frame 8 (whole, 40x50): the bridge stays in the frame, covers the
    face, and is no larger than the larger detection plus a quarter of the distance between the two
    on each side."""

    def face(i: int) -> list[float]:
        return [630.0 - 4 * i, 200.0, 670.0 - 4 * i, 250.0]

    dets = {i: Detections.of_kind([np.clip(face(i), 0, 640)], [0.9], FACE) for i in [0, 1, 2] + list(range(8, 20))}
    out = _run(dets, 30, TrackingParams(max_gap=15, smooth=0))
    a, b = np.clip(face(2), 0, 640), np.clip(face(8), 0, 640)
    travel = np.abs((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2)
    for i in range(3, 8):
        assert len(out[i]) == 1, f"frame {i}"
        box = out[i].kind(FACE).xyxy[0]
        assert box[2] <= SIZE[0] and set(out[i].track_ids.tolist()) == {1}
        assert box[2] - box[0] <= 40 + 0.5 * travel[0] + 1e-3, f"frame {i}: {box}"
        assert box[3] - box[1] <= 50 + 0.5 * travel[1] + 1e-3, f"frame {i}: {box}"
        assert _covered(box, np.clip(face(i), 0, 640)) >= 0.9, f"frame {i}: {box}"


def _cut(src: Path, dst: Path, frames: int) -> Path:
    """The first `frames` frames of `src`, re-encoded near-losslessly."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        s = out.add_stream("libx264", rate=vin.average_rate)
        s.width, s.height, s.pix_fmt = vin.width, vin.height, "yuv420p"
        s.codec_context.options = {"crf": "8", "preset": "ultrafast"}
        for i, frame in enumerate(inp.decode(vin)):
            if i >= frames:
                break
            out.mux(s.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(s.encode(None))
    return dst


class _Candidates:
    def __init__(self) -> None:
        self.frames: dict[int, Detections] = {}

    def start(self, source, plan) -> None:
        pass

    def frame(self, index, pts, candidates) -> None:
        if candidates is not None:
            self.frames[index] = candidates


@pytest.mark.usefixtures("detection_models")
def test_no_half_car_blur_before_the_plate_of_a_car_entering(shared_data, tmp_path):
    """The parking-lot dev clip, plates tracked: a car drives in from the bottom edge and its plate
    (about 33x20 px) is first detected near frame 80. The boxes its track puts before that keep the
    plate's size plus the motion margin (the box swept along its movement, a quarter of its size
    around) and lie on its way in from the bottom edge, a few plate sizes at most; they used to grow
    backwards in time to 161x123 px, over the car's whole rear."""
    from veil.engine.video import detect_video

    clip = _cut(shared_data / "videos" / "intel_car-detection.mp4", tmp_path / "cut.mp4", 100)
    config = ModelConfig(enable_lp=True, lp_track=True)
    seen = _Candidates()
    report = detect_video(clip, config, record=seen)
    frames = {f.index: f.detections.kind(PLATE) for f in report.frames}
    # the plate's first confident detection in the entry area (x 330-410, lower half)
    first = min(
        i
        for i, c in seen.frames.items()
        for b, s in zip(c.kind(PLATE).xyxy, c.kind(PLATE).scores)
        if s >= config.lp_threshold and 330 <= b[0] <= 410 and b[1] >= 200
    )
    box0 = next(b for b in frames[first].xyxy if 330 <= b[0] <= 410 and b[1] >= 200)
    track = next(int(t) for b, t in zip(frames[first].xyxy, frames[first].track_ids) if np.array_equal(b, box0))
    w0, h0 = box0[2] - box0[0], box0[3] - box0[1]
    c0 = (box0[:2] + box0[2:]) / 2
    lead = [i for i in range(first) if track in frames[i].track_ids]
    assert 60 <= first <= 90 and lead, (first, lead)  # the clip as expected: a plate found late, a lead
    for i in lead:
        b = frames[i].xyxy[list(frames[i].track_ids).index(track)]
        w, h = b[2] - b[0], b[3] - b[1]
        moved = np.abs((b[:2] + b[2:]) / 2 - c0)  # the box swept along the plate's movement: twice this
        assert w <= 1.5 * w0 + 2 * moved[0] + 1 and h <= 1.5 * h0 + 2 * moved[1] + 1, (i, b.tolist(), box0.tolist())
        # near where the plate appears: a few plate sizes, on its way in from the bottom edge
        assert w <= 3.5 * w0 and h <= 3.5 * h0, (i, b.tolist(), box0.tolist())
        assert box0[0] - 2.5 * w0 <= b[0] and b[2] <= box0[2] + 2.5 * w0 and b[1] >= box0[1] - 0.5 * h0, (
            i,
            b.tolist(),
            box0.tolist(),
        )
