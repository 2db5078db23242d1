"""Redaction shapes, strength and styles on synthetic images (no models needed)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.redact import redact, redaction_alpha, redaction_mask

H, W = 300, 400


def _noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _dets(boxes, kind) -> Detections:
    return Detections.of_kind(boxes, np.full(len(boxes), 0.9), kind)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def _coords():
    yy, xx = np.mgrid[0:H, 0:W]
    return xx + 0.5, yy + 0.5


def test_face_mask_is_a_grown_ellipse_containing_the_box():
    box = (180.0, 100.0, 220.0, 150.0)  # 40 x 50 face
    image = _noise()
    out = redact(image.copy(), _dets([box], FACE), ModelConfig())
    changed = _changed(image, out)
    x, y = _coords()
    cx, cy, w, h = 200.0, 125.0, 40.0, 50.0
    # Ellipse grown beyond the box and lifted towards the hairline.
    rho = np.hypot((x - cx) / (0.85 * w), (y - (cy - 0.08 * h)) / (0.9 * h))
    assert changed[rho < 0.97].mean() > 0.99  # inside: redacted
    assert not changed[rho > 1.4].any()  # beyond the feather band: untouched
    assert changed[100:150, 180:220].all()  # the whole detection box is covered
    # Taller than wide, and more room above the box (hairline) than below it (chin).
    rows, cols = np.nonzero(changed)
    assert rows.max() - rows.min() > cols.max() - cols.min()
    assert 100 - rows.min() > rows.max() - 150
    # An ellipse, not a rectangle: the corners of its bounding box stay untouched.
    assert not changed[rows.min(), cols.min()] and not changed[rows.max(), cols.max()]


def test_plate_mask_is_a_rounded_rectangle_containing_the_box():
    box = (100.0, 140.0, 260.0, 180.0)  # 160 x 40 plate
    image = _noise()
    out = redact(image.copy(), _dets([box], PLATE), ModelConfig(enable_lp=True))
    changed = _changed(image, out)
    assert changed[140:180, 100:260].all()  # every pixel of the plate box, corners included
    rows, cols = np.nonzero(changed)
    # Grown around the rim on every side.
    assert rows.min() < 140 - 5 and rows.max() > 180 + 5 and cols.min() < 100 - 5 and cols.max() > 260 + 5
    # Rounded: the bounding box's corner pixels are untouched, the edge midpoints are redacted.
    assert not changed[rows.min(), cols.min()] and not changed[rows.max(), cols.max()]
    assert changed[rows.min(), 180] and changed[160, cols.min()]


def test_circle_blur_is_a_disc_around_the_detection():
    box = (170.0, 100.0, 230.0, 180.0)  # 60 x 80, half diagonal 50
    image = _noise()
    out = redact(image.copy(), _dets([box], FACE), ModelConfig(mask_blur=False))
    changed = _changed(image, out)
    x, y = _coords()
    r = np.hypot(x - 200, y - 140)
    radius = 1.1 * 50
    assert changed[r < radius - 1].mean() > 0.99
    assert not changed[r > radius + 2].any()
    assert changed[100:180, 170:230].all()


def test_circle_blur_on_a_plate_is_still_a_circle():
    box = (150.0, 140.0, 250.0, 160.0)
    image = _noise()
    changed = _changed(image, redact(image.copy(), _dets([box], PLATE), ModelConfig(mask_blur=False, enable_lp=True)))
    rows, cols = np.nonzero(changed)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2


@pytest.mark.parametrize(
    "config", [ModelConfig(), ModelConfig(mask_blur=False), ModelConfig(style="pixelate"), ModelConfig(style="solid")]
)
def test_redaction_mask_is_exactly_the_changed_area(config):
    # Overlapping faces, a plate, a box clipped by the image border and one entirely outside.
    dets = Detections.concat(
        [
            _dets([(50, 50, 110, 120), (90, 70, 150, 140), (370, -20, 430, 40), (500, 500, 560, 560)], FACE),
            _dets([(200, 220, 330, 255)], PLATE),
        ]
    )
    image = _noise(1)
    out = redact(image.copy(), dets, config)
    changed = _changed(image, out)
    mask = redaction_mask(image.shape[:2], dets, config)
    assert mask.shape == (H, W) and mask.dtype == bool
    assert not (changed & ~mask).any()  # nothing changes outside the mask
    # Inside it, only the faintest feather pixels may round back to their old value.
    assert (mask & ~changed).sum() < 0.01 * mask.sum()
    assert mask[0, 380]  # the clipped box is still redacted


def test_no_detections_changes_nothing():
    image = _noise()
    assert np.array_equal(redact(image.copy(), Detections.empty(), ModelConfig()), image)
    assert not redaction_mask((H, W), Detections.empty(), ModelConfig()).any()


def _stripes(size: int, period: float) -> np.ndarray:
    """A face-like high-contrast pattern whose features scale with the face."""
    x = np.arange(size)[None, :] + np.zeros((size, 1))
    y = np.arange(size)[:, None] + np.zeros((1, size))
    value = 127.5 + 127.5 * np.sign(np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))
    return np.repeat(value[..., None], 3, axis=2).astype(np.uint8)


@pytest.mark.parametrize("face_size", [24, 96, 480])
def test_blur_strength_scales_with_the_face_size(face_size):
    # The same pattern at three scales: with a fixed kernel the large face would keep its contrast.
    canvas = 3 * face_size
    image = _stripes(canvas, period=face_size / 3)
    box = (face_size, face_size, 2 * face_size, 2 * face_size)
    out = redact(image.copy(), _dets([box], FACE), ModelConfig())
    core = (slice(face_size + face_size // 4, 2 * face_size - face_size // 4),) * 2
    residual = out[core].astype(float).std() / image[core].astype(float).std()
    assert residual < 0.15, f"pattern still visible at {face_size}px: residual contrast {residual:.2f}"


def test_pixelate_fills_blocks_with_one_colour():
    image = _noise()
    box = (150.0, 100.0, 250.0, 200.0)
    out = redact(image.copy(), _dets([box], FACE), ModelConfig(style="pixelate"))
    core = out[120:180, 170:230].astype(int)
    # Blocks of 20 px (100 px face / 5 blocks): neighbouring pixels mostly share one colour.
    same_as_right = np.all(core[:, 1:] == core[:, :-1], axis=2).mean()
    assert same_as_right > 0.9
    assert len(np.unique(core.reshape(-1, 3), axis=0)) < 30
    assert not _changed(image, out)[:, :80].any()


def test_solid_fills_the_shape_with_black():
    image = _noise()
    out = redact(image.copy(), _dets([(150, 100, 250, 200)], FACE), ModelConfig(style="solid"))
    assert (out[110:190, 160:240] == 0).all()
    assert not _changed(image, out)[:, :80].any()


def test_plate_text_is_unreadable():
    # Dark characters on a white plate: after redaction the plate is a smooth blob.
    image = np.full((H, W, 3), 90, np.uint8)
    image[140:180, 100:260] = 255
    for x in range(108, 250, 20):
        image[146:174, x : x + 6] = 0
    out = redact(image.copy(), _dets([(100, 140, 260, 180)], PLATE), ModelConfig(enable_lp=True))
    row = out[160, :, 0].astype(float)
    strokes = np.concatenate([row[x : x + 6] for x in range(108, 250, 20)])
    gaps = np.concatenate([row[x + 8 : x + 16] for x in range(108, 240, 20)])
    assert abs(strokes.mean() - gaps.mean()) < 5  # was 255: no character stands out
    assert np.abs(np.diff(row[100:260])).max() < 4  # and no stroke edge is left


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="RGB"):
        redact(np.zeros((10, 10), np.uint8), Detections.empty(), ModelConfig())


def _face_with_landmarks(box, eyes_y: float, mouth_y: float, cx: float = 200.0) -> Detections:
    # Eyes 30 px apart, nose between, mouth corners 24 px apart (a frontal face, no roll).
    marks = [cx - 15, eyes_y, cx + 15, eyes_y, cx, (eyes_y + mouth_y) / 2, cx - 12, mouth_y, cx + 12, mouth_y]
    return Detections.of_kind([box], [0.9], FACE, landmarks=[marks])


def test_landmarks_extend_the_face_mask_to_the_chin_when_the_box_sits_high():
    # The box runs from above the brows to the mouth: a box-only ellipse leaves the chin.
    box = (170.0, 60.0, 230.0, 130.0)
    eyes_y, mouth_y = 100.0, 135.0  # d = 35 px: the chin is ~1.8 d below the eyes, at y ~163
    chin, forehead = (200, 160), (200, 55)
    config = ModelConfig()
    box_only = redaction_alpha((H, W), _dets([box], FACE), config)
    assert box_only[chin[1], chin[0]] < 0.5  # the failure the landmarks fix
    alpha = redaction_alpha((H, W), _face_with_landmarks(box, eyes_y, mouth_y), config)
    assert alpha[chin[1], chin[0]] >= 0.5 and alpha[forehead[1], forehead[0]] >= 0.5
    assert (alpha >= box_only).all()  # the landmark ellipse adds to the box's, never takes away
    # redact changes exactly where the alpha is positive.
    image = _noise()
    out = redact(image.copy(), _face_with_landmarks(box, eyes_y, mouth_y), config)
    assert (_changed(image, out) <= (alpha > 0)).all() and _changed(image, out)[chin[1], chin[0]]
    assert np.array_equal(alpha > 0, redaction_mask((H, W), _face_with_landmarks(box, eyes_y, mouth_y), config))


def test_implausible_or_missing_landmarks_leave_the_box_mask():
    box = (170.0, 60.0, 230.0, 130.0)
    config = ModelConfig()
    box_only = redaction_alpha((H, W), _dets([box], FACE), config)
    wild = _face_with_landmarks(box, 100.0, 290.0)  # eye-mouth distance 2.7x the box height
    missing = Detections.of_kind([box], [0.9], FACE, landmarks=[[np.nan] * 10])
    for dets in (wild, missing):
        assert np.array_equal(redaction_alpha((H, W), dets, config), box_only)
