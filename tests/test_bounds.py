"""Plausible boxes (`veil.engine.bounds`): plate and face boxes whose shape or size cannot be one are
not drawn, in photos and in video; a real large close-up plate still is."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import veil.engine.detect as detect_module
from veil.engine.anonymize import anonymize
from veil.engine.bounds import plausible
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.video import Pipeline

PLATES = ModelConfig(blur_face=False, enable_lp=True)


def test_bounds_drop_impossible_plates_and_faces_and_keep_boxes_cut_by_the_border():
    plates = [
        [600, 200, 1200, 800],  # square, 600 px wide in a 1080p frame: no plate
        [900, 500, 1000, 530],  # a plate
        [500, 300, 520, 360],  # three times taller than wide: no plate
        [0, 300, 15, 340],  # as tall, but cut by the left border: a plate half out of the frame
        [100, 900, 1300, 980],
    ]  # 1200 px wide: wider than a plate can be in this frame
    faces = [
        [100, 100, 400, 150],  # six times wider than tall: no face
        [100, 100, 150, 160],  # a face
        [700, 1060, 1000, 1080],
    ]  # as flat, but cut by the bottom border
    dets = Detections.concat([Detections.of_kind(plates, [0.9] * 5, PLATE), Detections.of_kind(faces, [0.9] * 3, FACE)])
    kept = plausible(dets, 1920, 1080)
    assert kept.kind(PLATE).xyxy.tolist() == [plates[1], plates[3]]
    assert kept.kind(FACE).xyxy.tolist() == [faces[1], faces[2]]


def test_a_plate_box_around_a_smaller_plate_is_the_car_not_a_plate():
    """The parking-lot dev clip's frame 217 (768x432): the plate model boxes the car's rear (119x116 px)
    and, inside it, its plate (30x16 px); only the plate is one. A duplicate box of one plate stays."""
    car, plate = [336, 129, 454, 245], [382, 218, 412, 235]
    kept = plausible(Detections.of_kind([car, plate], [0.6, 0.8], PLATE), 768, 432)
    assert kept.xyxy.tolist() == [plate]
    twice = [[380, 216, 414, 237], plate]
    assert len(plausible(Detections.of_kind(twice, [0.6, 0.8], PLATE), 768, 432)) == 2


def _changed(before: np.ndarray, after: np.ndarray, box) -> float:
    x1, y1, x2, y2 = (int(v) for v in box)
    return float(np.abs(before[y1:y2, x1:x2].astype(int) - after[y1:y2, x1:x2]).mean())


@pytest.mark.usefixtures("detection_models")
def test_real_close_up_plate_is_still_blurred(shared_data, tmp_path):
    """Control: the dev set's largest plate (a close-up, 293x146 px in a 900x600 photo; the detector's
    box is 0.21 of the longest side high) passes the bounds and is blurred."""
    item = json.loads((shared_data / "openalpr_plates" / "labels.json").read_text())["items"][32]
    assert item["file"].endswith("us_us7.jpg")
    src = shared_data / "openalpr_plates" / item["file"]
    anonymize(src, tmp_path / "out.jpg", PLATES)
    before, after = cv2.imread(str(src)), cv2.imread(str(tmp_path / "out.jpg"))
    assert _changed(before, after, item["plates"][0]) > 10


@pytest.mark.usefixtures("detection_models")
def test_implausible_plate_box_in_a_photo_is_not_drawn(shared_data, tmp_path, monkeypatch):
    """A 1080p photo (a dash-cam frame with its plates, scaled up) where the plate model also returns a
    square 600 px box over the road: the real plates are blurred, the square is not drawn."""
    item = json.loads((shared_data / "ro_dashcam_plates" / "labels.json").read_text())["items"][0]
    image = cv2.resize(cv2.imread(str(shared_data / "ro_dashcam_plates" / item["file"])), (1920, 1080))
    src = tmp_path / "frame.png"
    cv2.imwrite(str(src), image)
    square = [100.0, 300.0, 700.0, 900.0]
    real = detect_module._plate_yolo(None)

    def with_square(provider):
        def net(image_rgb, **kw):
            boxes, scores = real(image_rgb, **kw)
            if image_rgb.shape[1] == 1920:  # the whole-photo pass
                boxes, scores = np.vstack([boxes, [square]]), np.r_[scores, 0.99]
            return boxes.astype(np.float32), scores.astype(np.float32)

        return net

    monkeypatch.setattr(detect_module, "_plate_yolo", with_square)
    report = anonymize(src, tmp_path / "out.png", PLATES)
    after = cv2.imread(str(tmp_path / "out.png"))
    assert _changed(image, after, square) == 0
    scale = 1920 / 1280
    for plate in item["plates"]:
        assert _changed(image, after, [v * scale for v in plate]) > 5
    assert report.frames[0].detections.kind(PLATE).xyxy.shape[0] >= 1
    # control: the same square, plate-shaped (wide and low), is drawn
    square_plate = [100.0, 300.0, 700.0, 450.0]
    square[:] = square_plate
    anonymize(src, tmp_path / "out2.png", PLATES)
    assert _changed(image, cv2.imread(str(tmp_path / "out2.png")), square_plate) > 5


def _clip(path: Path, frames: int = 20) -> Path:
    """320x240: a plate-shaped bright patch moving right at the bottom, and a still bright 110 px
    square at the top left, far enough that no crop around the plate reaches it."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.codec_context.options = {"qp": "0", "preset": "ultrafast"}  # lossless: the square stays still
        for i in range(frames):
            img = np.full((240, 320, 3), 60, np.uint8)
            img[200:215, 230 + i : 280 + i] = 255
            img[10:120, 10:120] = 255
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode(None))
    return path


@pytest.mark.parametrize("track", [True, False])
def test_implausible_plate_box_in_a_video_is_not_drawn(tmp_path, track):
    """Video, tracked and untracked, with a detector that boxes every bright blob as a plate: the
    moving patch (a plate's shape) is drawn in every frame, the square (no plate's shape or size) in none."""

    def detector(image, kinds, side=None, tiles=None):
        count, _, stats, _ = cv2.connectedComponentsWithStats((image.min(axis=2) > 200).astype(np.uint8))
        boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]]
        return Detections.of_kind(boxes, [0.9] * len(boxes), PLATE)

    report = Pipeline(
        _clip(tmp_path / "c.mp4"), PLATES.model_copy(update={"lp_track": track}), None, detect=detector
    ).run(None)
    for f in report.frames:
        boxes = f.detections.kind(PLATE).xyxy
        assert len(boxes) >= 1, f"frame {f.index}: the plate is not drawn"
        assert (boxes[:, 1] > 150).all(), f"frame {f.index}: {boxes.tolist()}"
