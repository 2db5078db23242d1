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
from .detections import FACE, Detections

# Face ellipse: semi-axes as a fraction of the box size and the centre's upward shift (fraction of
# the box height). CenterFace boxes run from the brows to the chin; growing by 1.5 x 1.6 and moving
# up covers hairline, ears and chin, and the ellipse still contains the box's corners.
_FACE_AXES = (0.75, 0.80)
_FACE_LIFT = 0.08
# Plate rounded rectangle: padding on each side as a fraction of the box height (plate rim, frame).
_PLATE_PAD_X, _PLATE_PAD_Y = 0.30, 0.25
# Circle blur: radius as a multiple of half the box diagonal (the circle contains the box).
_CIRCLE_SCALE = 1.1
# Feather width (outwards) as a fraction of the shape's smaller radius, in pixels at least.
_FEATHER = 0.12
_MIN_FEATHER = 1.5
# Blur strength: Gaussian sigma as a fraction of the object's size (sqrt of box area), at least
# _MIN_SIGMA pixels. 1/5 of the size leaves no recognisable feature and no readable character.
_SIGMA_PER_SIZE = {FACE: 0.20, 1: 0.25}
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
        mask[shape.y0:shape.y1, shape.x0:shape.x1] |= shape.alpha > 0
    return mask


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
    for box, kind in zip(detections.xyxy.astype(np.float64), detections.kinds):
        x1, y1, x2, y2 = box
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if not config.mask_blur:
            r = _CIRCLE_SCALE * 0.5 * np.hypot(w, h)
            shape = _circle(shape_hw, cx, cy, r)
        elif kind == FACE:
            shape = _ellipse(shape_hw, cx, cy - _FACE_LIFT * h, _FACE_AXES[0] * w, _FACE_AXES[1] * h)
        else:
            shape = _rounded_rect(shape_hw, cx, cy, w / 2 + _PLATE_PAD_X * h, h / 2 + _PLATE_PAD_Y * h,
                                  radius=min(_PLATE_PAD_X, _PLATE_PAD_Y) * h)
        if shape is not None:
            y0, y1_, x0, x1_, alpha = shape
            shapes.append(_Shape(y0, y1_, x0, x1_, alpha, float(np.sqrt(w * h)), int(kind)))
    return shapes


def _grid(shape_hw, cx, cy, rx, ry, feather):
    """ROI bounds around (cx, cy) with half-extents rx, ry plus feather, and pixel-centre offsets."""
    height, width = shape_hw
    x0, x1 = max(int(np.floor(cx - rx - feather)), 0), min(int(np.ceil(cx + rx + feather)) + 1, width)
    y0, y1 = max(int(np.floor(cy - ry - feather)), 0), min(int(np.ceil(cy + ry + feather)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    return y0, y1, x0, x1, dx, dy


def _feather(distance_outside: np.ndarray, feather: float) -> np.ndarray:
    """alpha from a signed distance (<= 0 inside the shape): 1 inside, linear fall-off over `feather` px."""
    return np.clip(1.0 - distance_outside / feather, 0.0, 1.0).astype(np.float32)


def _feather_width(radius: float) -> float:
    return max(_MIN_FEATHER, _FEATHER * radius)


def _ellipse(shape_hw, cx, cy, a, b):
    feather = _feather_width(min(a, b))
    grid = _grid(shape_hw, cx, cy, a, b, feather)
    if grid is None:
        return None
    y0, y1, x0, x1, dx, dy = grid
    # Normalised radius; (rho - 1) * geometric-mean radius approximates the distance to the edge.
    rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return y0, y1, x0, x1, _feather((rho - 1.0) * np.sqrt(a * b), feather)


def _circle(shape_hw, cx, cy, r):
    feather = _MIN_FEATHER  # just anti-aliasing: the seed's circle is a filled disc
    grid = _grid(shape_hw, cx, cy, r, r, feather)
    if grid is None:
        return None
    y0, y1, x0, x1, dx, dy = grid
    return y0, y1, x0, x1, _feather(np.sqrt(dx ** 2 + dy ** 2) - r, feather)


def _rounded_rect(shape_hw, cx, cy, hx, hy, radius):
    feather = _feather_width(min(hx, hy))
    grid = _grid(shape_hw, cx, cy, hx, hy, feather)
    if grid is None:
        return None
    y0, y1, x0, x1, dx, dy = grid
    # Signed distance to a rounded box (Inigo Quilez's formula), vectorised.
    qx, qy = np.abs(dx) - (hx - radius), np.abs(dy) - (hy - radius)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    inside = np.minimum(np.maximum(qx, qy), 0)
    return y0, y1, x0, x1, _feather(outside + inside - radius, feather)


# ----------------------------------------------------------------------------- styles
def _apply(image: np.ndarray, shape: _Shape, style: str) -> None:
    if style == "solid":
        fill = np.empty((shape.y1 - shape.y0, shape.x1 - shape.x0, 3), np.float32)
        fill[:] = _SOLID_RGB
        _blend(image, shape, fill)
        return
    if style == "pixelate":
        _blend(image, shape, _pixelated(image, shape))
        return
    _blend(image, shape, _blurred(image, shape))


def _blend(image: np.ndarray, shape: _Shape, replacement: np.ndarray) -> None:
    roi = image[shape.y0:shape.y1, shape.x0:shape.x1]
    alpha = shape.alpha[..., None]
    mixed = roi.astype(np.float32) * (1.0 - alpha) + replacement * alpha
    # Only write where alpha > 0, so that pixels outside the mask keep their exact values.
    inside = shape.alpha > 0
    roi[inside] = np.clip(mixed[inside] + 0.5, 0, 255).astype(np.uint8)


def _blurred(image: np.ndarray, shape: _Shape) -> np.ndarray:
    """Gaussian blur of the ROI with sigma proportional to the object's size.

    A large sigma is done as downscale (INTER_AREA) -> small Gaussian -> upscale, which costs
    O(ROI) whatever the sigma. The ROI is padded by ~2 sigma so the blur sees real context.
    """
    height, width = image.shape[:2]
    sigma = max(_MIN_SIGMA, _SIGMA_PER_SIZE.get(shape.kind, 0.25) * shape.size)
    pad = int(np.ceil(2 * sigma))
    y0, y1 = max(shape.y0 - pad, 0), min(shape.y1 + pad, height)
    x0, x1 = max(shape.x0 - pad, 0), min(shape.x1 + pad, width)
    src = image[y0:y1, x0:x1]
    scale = max(1.0, sigma / 2.0)  # in the small image the remaining sigma is about 2 px
    if scale > 1.0:
        small_w, small_h = max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale))
        small = cv2.resize(src, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / scale, borderType=cv2.BORDER_REPLICATE)
        blurred = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    else:
        blurred = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    inner = blurred[shape.y0 - y0:shape.y1 - y0, shape.x0 - x0:shape.x1 - x0]
    return inner.astype(np.float32)


def _pixelated(image: np.ndarray, shape: _Shape) -> np.ndarray:
    """Blocks of side size/_PIXEL_BLOCKS (at least 4 px), each filled with its mean colour."""
    roi = image[shape.y0:shape.y1, shape.x0:shape.x1]
    block = max(4.0, shape.size / _PIXEL_BLOCKS)
    h, w = roi.shape[:2]
    small = cv2.resize(roi, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
