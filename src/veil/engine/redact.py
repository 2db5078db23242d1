"""Redaction: make every detected face and plate unrecognisable.

Each detection gets a soft mask ("alpha", 1 = fully redacted) over a small region of interest:
- `mask_blur: true`: an ellipse for faces, a rounded rectangle for plates, both grown beyond the
  detector's box (CenterFace boxes are tight: hairline and chin lie outside them) and feathered
  outwards so the edge does not look cut out;
- `mask_blur: false`: the seed's "circle blur", a filled circle around the detection.
Each shape contains its whole detection box. The masked region is then blurred (default),
pixelated or filled (`ModelConfig.style`), with a strength proportional to the object's size so
that a large face is as unrecognisable as a small one.

Only the padded ROI of each detection is touched; the whole frame is never filtered, so the cost
per detection is independent of the frame size. `redaction_mask` returns exactly the pixels
`redact` may change (the union of all alphas > 0), which the video leak check relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import ModelConfig
from .detections import FACE, PLATE, Detections, face_axis

# Face ellipse: semi-axes as a fraction of the box size and the centre's upward shift (fraction of
# the box height). CenterFace boxes run from the brows to the chin; growing by 1.7 x 1.8 and moving
# up covers hair, ears and chin, and the ellipse contains the box's corners. A tighter ellipse
# leaves a sharp head silhouette that detectors still take for a face (measured: 25 of 119 dev
# faces re-detected at the default threshold with 1.5 x 1.6 and sigma 0.2, 6 with these values).
_FACE_AXES = (0.85, 0.90)
_FACE_LIFT = 0.08
# Face ellipse from the five landmarks (eye centre E, mouth centre M, d = |M - E|), drawn along the
# face's own axis so it follows roll and does not depend on where the box sits: from ~1.45 d above the
# eyes (forehead, hairline) to ~2.05 d below them (chin is ~1.8 d), half-width ~1.3 d (cheeks and
# ears; face width is ~2.2 d). In a profile the nose lies off the eye-mouth line: the head's centre lies
# the other way. Used together with (max of) the box ellipse, never instead of it.
_LM_CENTRE, _LM_HALF_LENGTH, _LM_HALF_WIDTH, _LM_NOSE_SHIFT = 0.30, 1.75, 1.30, 0.5
# Plate rounded rectangle: padding on each side as a fraction of the box height (plate rim, frame).
_PLATE_PAD_X, _PLATE_PAD_Y = 0.30, 0.25
# Circle blur: radius as a multiple of half the box diagonal (the circle contains the box).
_CIRCLE_SCALE = 1.1
# Feather width (outwards) as a fraction of the shape's smaller radius, in pixels at least.
_FEATHER = 0.12
_MIN_FEATHER = 1.5
# Blur strength: Gaussian sigma as a fraction of the object's size (sqrt of box area), at least
# _MIN_SIGMA pixels. A quarter of the size already leaves no readable character; faces get half
# of it, which also melts the head's outline into the background.
_SIGMA_PER_SIZE = {FACE: 0.50, PLATE: 0.25}
_MIN_SIGMA = 3.0
# Pixelate: number of blocks across the object's size.
_PIXEL_BLOCKS = 5.0
_SOLID_RGB = (0, 0, 0)


@dataclass(frozen=True)
class _Shape:
    """One detection's soft mask: `alpha` (float32, 0..1) placed at rows y0:y1, columns x0:x1."""

    y0: int
    y1: int
    x0: int
    x1: int
    alpha: np.ndarray
    size: float  # the object's size in pixels (sqrt of the box area)
    kind: int


def redaction_mask(shape_hw: tuple[int, int], detections: Detections, config: ModelConfig) -> np.ndarray:
    """Boolean HxW mask of exactly the pixels `redact` may change for these detections."""
    height, width = shape_hw[:2]
    mask = np.zeros((height, width), bool)
    for shape in _shapes((height, width), detections, config):
        mask[shape.y0 : shape.y1, shape.x0 : shape.x1] |= shape.alpha > 0
    return mask


def redaction_alpha(shape_hw: tuple[int, int], detections: Detections, config: ModelConfig) -> np.ndarray:
    """Float32 HxW strength of the redaction (0..1, the strongest shape at each pixel) as `redact`
    renders it; `bench/eval_detection.py` counts an object as hidden where this is >= 0.5."""
    height, width = shape_hw[:2]
    alpha = np.zeros((height, width), np.float32)
    for shape in _shapes((height, width), detections, config):
        roi = alpha[shape.y0 : shape.y1, shape.x0 : shape.x1]
        np.maximum(roi, shape.alpha, out=roi)
    return alpha


def redact(image_rgb: np.ndarray, detections: Detections, config: ModelConfig) -> np.ndarray:
    """Redact every detection in `image_rgb` (HxWx3 uint8) in place and return it."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"redact expects an HxWx3 uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    for shape in _shapes(image_rgb.shape[:2], detections, config):
        _apply(image_rgb, shape, config.style)
    return image_rgb


# ----------------------------------------------------------------------------- shapes
def _shapes(shape_hw: tuple[int, int], detections: Detections, config: ModelConfig) -> list[_Shape]:
    shapes = []
    marks = detections.landmarks
    for i, (box, kind) in enumerate(zip(detections.xyxy.astype(np.float64), detections.kinds)):
        x1, y1, x2, y2 = box
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if not config.mask_blur:
            r = _CIRCLE_SCALE * 0.5 * np.hypot(w, h)
            shape = _circle(shape_hw, cx, cy, r)
        elif kind == FACE:
            shape = _ellipse(shape_hw, cx, cy - _FACE_LIFT * h, _FACE_AXES[0] * w, _FACE_AXES[1] * h)
            if marks is not None:
                shape = _union(shape, _landmark_ellipse(shape_hw, marks[i], h))
        else:
            shape = _rounded_rect(
                shape_hw,
                cx,
                cy,
                w / 2 + _PLATE_PAD_X * h,
                h / 2 + _PLATE_PAD_Y * h,
                radius=min(_PLATE_PAD_X, _PLATE_PAD_Y) * h,
            )
        if shape is not None:
            y0, y1_, x0, x1_, alpha = shape
            shapes.append(_Shape(y0, y1_, x0, x1_, alpha, float(np.sqrt(w * h)), int(kind)))
    return shapes


def _feather_width(radius: float) -> float:
    return max(_MIN_FEATHER, _FEATHER * radius)


def _soft_shape(shape_hw, cx, cy, rx, ry, feather, signed_distance):
    """ROI bounds and alpha of a shape centred at (cx, cy) with half-extents rx, ry.

    `signed_distance(dx, dy)` gives the distance in pixels to the shape's edge (<= 0 inside) for
    offsets from the centre; alpha is 1 inside and falls off linearly over `feather` pixels outside.
    Large shapes are evaluated on a coarse grid (step ~1/32 of the radius) and upsampled
    bilinearly: alpha is smooth, and this keeps the cost per face small at any size.
    """
    height, width = shape_hw
    x0, x1 = max(int(np.floor(cx - rx - feather)), 0), min(int(np.ceil(cx + rx + feather)) + 1, width)
    y0, y1 = max(int(np.floor(cy - ry - feather)), 0), min(int(np.ceil(cy + ry + feather)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    step = max(1, int(min(rx, ry) / 32))
    nx, ny = -(-(x1 - x0) // step), -(-(y1 - y0) // step)
    # Sample j of the coarse grid sits where cv2.resize puts it: at pixel centre x0 + (j + 0.5) * step.
    dx = ((np.arange(nx, dtype=np.float32) + np.float32(0.5)) * np.float32(step) + np.float32(x0 - cx))[None, :]
    dy = ((np.arange(ny, dtype=np.float32) + np.float32(0.5)) * np.float32(step) + np.float32(y0 - cy))[:, None]
    alpha = signed_distance(dx, dy)
    alpha *= np.float32(-1.0 / feather)
    alpha += np.float32(1.0)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    if step > 1:
        alpha = cv2.resize(alpha, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    return y0, y1, x0, x1, np.ascontiguousarray(alpha)


def _ellipse(shape_hw, cx, cy, a, b):
    def distance(dx, dy):
        # (normalised radius - 1) * geometric-mean radius approximates the distance to the edge.
        rho = np.sqrt(np.square(dx / np.float32(a)) + np.square(dy / np.float32(b)))
        rho -= np.float32(1.0)
        rho *= np.float32(np.sqrt(a * b))
        return rho

    return _soft_shape(shape_hw, cx, cy, a, b, _feather_width(min(a, b)), distance)


def _landmark_ellipse(shape_hw, marks: np.ndarray, box_h: float):
    """The face ellipse placed by the landmarks (see _LM_*), or None when they are missing or implausible
    (`detections.face_axis`)."""
    all_eyes, all_mouths, all_d, ok = face_axis(marks, np.array([box_h]))  # one face
    if not ok[0]:
        return None
    eyes, mouth, d = all_eyes[0], all_mouths[0], float(all_d[0])
    nose = marks.astype(np.float64).reshape(5, 2)[2]
    u = (mouth - eyes) / d
    p = np.array([-u[1], u[0]])
    side = float(np.dot(nose - (eyes + mouth) / 2, p))
    cx, cy = eyes + _LM_CENTRE * d * u - _LM_NOSE_SHIFT * side * p
    a, b = _LM_HALF_WIDTH * d, _LM_HALF_LENGTH * d
    (px, py), (ux, uy) = (p / a).astype(np.float32), (u / b).astype(np.float32)

    def distance(dx, dy):
        rho = np.sqrt(np.square(dx * px + dy * py) + np.square(dx * ux + dy * uy))
        rho -= np.float32(1.0)
        rho *= np.float32(np.sqrt(a * b))
        return rho

    rx, ry = np.hypot(a * p[0], b * u[0]), np.hypot(a * p[1], b * u[1])
    return _soft_shape(shape_hw, cx, cy, rx, ry, _feather_width(min(a, b)), distance)


def _union(first, second):
    """Two `_soft_shape` results as one: the bounding ROI, alpha the max of both."""
    if first is None or second is None:
        return first if second is None else second
    y0, y1, x0, x1 = (
        min(first[0], second[0]),
        max(first[1], second[1]),
        min(first[2], second[2]),
        max(first[3], second[3]),
    )
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    for sy0, sy1, sx0, sx1, a in (first, second):
        roi = alpha[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        np.maximum(roi, a, out=roi)
    return y0, y1, x0, x1, alpha


def _circle(shape_hw, cx, cy, r):
    def distance(dx, dy):
        d = np.sqrt(np.square(dx) + np.square(dy))
        d -= np.float32(r)
        return d

    # The seed's circle is a filled disc: the feather is just anti-aliasing.
    return _soft_shape(shape_hw, cx, cy, r, r, _MIN_FEATHER, distance)


def _rounded_rect(shape_hw, cx, cy, hx, hy, radius):
    def distance(dx, dy):
        # Signed distance to a rounded box (Inigo Quilez's formula), vectorised.
        qx, qy = np.abs(dx) - np.float32(hx - radius), np.abs(dy) - np.float32(hy - radius)
        d = np.sqrt(np.square(np.maximum(qx, 0)) + np.square(np.maximum(qy, 0)))
        d += np.minimum(np.maximum(qx, qy), 0)
        d -= np.float32(radius)
        return d

    return _soft_shape(shape_hw, cx, cy, hx, hy, _feather_width(min(hx, hy)), distance)


# ----------------------------------------------------------------------------- styles
def _apply(image: np.ndarray, shape: _Shape, style: str) -> None:
    if style == "solid":
        replacement = np.empty((shape.y1 - shape.y0, shape.x1 - shape.x0, 3), np.uint8)
        replacement[:] = _SOLID_RGB
    elif style == "pixelate":
        replacement = _pixelated(image, shape)
    else:
        replacement = _blurred(image, shape)
    roi = image[shape.y0 : shape.y1, shape.x0 : shape.x1]
    # Per-pixel roi * (1 - alpha) + replacement * alpha; where alpha is 0 the source value comes
    # back exactly (weight 1.0), so nothing outside the mask changes.
    roi[:] = cv2.blendLinear(roi, replacement, 1.0 - shape.alpha, shape.alpha)


def _blurred(image: np.ndarray, shape: _Shape) -> np.ndarray:
    """Gaussian blur of the ROI with sigma proportional to the object's size.

    A large sigma is done as downscale (INTER_AREA) -> small Gaussian -> upscale, which costs
    O(ROI) whatever the sigma. The ROI is padded by ~2 sigma so the blur sees real context.
    """
    height, width = image.shape[:2]
    sigma = max(_MIN_SIGMA, _SIGMA_PER_SIZE[shape.kind] * shape.size)
    pad = int(np.ceil(2 * sigma))
    y0, y1 = max(shape.y0 - pad, 0), min(shape.y1 + pad, height)
    x0, x1 = max(shape.x0 - pad, 0), min(shape.x1 + pad, width)
    factor = max(1, int(sigma / 2))  # in the small image the remaining sigma is about 2 px
    if factor == 1:
        blurred = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    else:
        # INTER_AREA is several times faster for an exact integer factor: trim the padding to a multiple.
        x0, x1 = _trim_to_multiple(x0, x1, shape.x0, shape.x1, factor)
        y0, y1 = _trim_to_multiple(y0, y1, shape.y0, shape.y1, factor)
        small_size = (max(1, (x1 - x0) // factor), max(1, (y1 - y0) // factor))
        small = cv2.resize(image[y0:y1, x0:x1], small_size, interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REPLICATE)
        blurred = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(blurred[shape.y0 - y0 : shape.y1 - y0, shape.x0 - x0 : shape.x1 - x0])


def _trim_to_multiple(lo: int, hi: int, inner_lo: int, inner_hi: int, factor: int) -> tuple[int, int]:
    """Shrink [lo, hi) to a multiple of `factor` without cutting into [inner_lo, inner_hi), if possible."""
    excess = (hi - lo) % factor
    from_hi = min(excess, hi - inner_hi)
    from_lo = excess - from_hi
    if from_lo > inner_lo - lo:
        return lo, hi
    return lo + from_lo, hi - from_hi


def _pixelated(image: np.ndarray, shape: _Shape) -> np.ndarray:
    """Blocks of side size/_PIXEL_BLOCKS (at least 4 px), each filled with its mean colour."""
    roi = image[shape.y0 : shape.y1, shape.x0 : shape.x1]
    block = max(4.0, shape.size / _PIXEL_BLOCKS)
    h, w = roi.shape[:2]
    small = cv2.resize(roi, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
