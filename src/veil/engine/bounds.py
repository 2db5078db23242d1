"""Sanity bounds on detector boxes: a box whose shape or size cannot be a plate (or, clearly, a face)
is dropped before anything tracks, reviews or blurs it.

The plate detector now and then boxes a 600 px rounded rectangle on a table or a car's whole rear; a
blur there hides what the footage is for and looks broken. The bounds are fractions of the image's
longest side (the same plate is a larger share of a smaller photo) and width / height ratios,
chosen from the labelled plates and faces of the dev data with a margin (docs/detection-bounds.md
has the figures). A box that touches the image border may be cut by it, so its shape is not judged
in the direction of the cut (a plate half out of the frame at the left edge is narrow and tall).

Applied once per path: `Detector.detect` for photos, `FrameDetector` for video frames (in frame
pixels, after the crops and scans are put together).
"""

from __future__ import annotations

import numpy as np

from .detections import FACE, PLATE, Detections

# Plates: width / height at least this (square two-line plates are about 1.4, with some perspective
# less; the labelled plates are 2.0-4.5, the detector's boxes on them 1.5-3.8) ...
PLATE_MIN_ASPECT = 0.8
# ... and at most these shares of the image's longest side (largest labelled plate 0.16 high, 0.33
# wide: a close-up in a 900x600 photo, which the detector boxes at 0.21 high, 0.38 wide).
PLATE_MAX_HEIGHT = 0.3
PLATE_MAX_WIDTH = 0.6
# A plate box holding most (NEST_COVER) of another plate box of at most NEST_AREA of its area is the
# car around the plate, not a plate (on the parking-lot dev clip: a 119x116 px box over a car's rear,
# its 30x16 px plate inside, both found in one frame); plates do not nest.
NEST_COVER = 0.8
NEST_AREA = 0.25
# Faces: width / height within these (labelled faces 0.39-1.93; only clearly impossible shapes go).
FACE_ASPECT = (0.25, 3.0)
_EDGE = 1.0  # px: a box this close to the border may be cut by it


def plausible(dets: Detections, width: int, height: int) -> Detections:
    """`dets` (pixels of a `width` x `height` image) without the boxes that cannot be their kind."""
    if not len(dets):
        return dets
    x1, y1, x2, y2 = np.asarray(dets.xyxy, np.float64).T
    w, h = np.maximum(x2 - x1, 1e-6), np.maximum(y2 - y1, 1e-6)
    aspect = w / h
    cut_x = (x1 <= _EDGE) | (x2 >= width - _EDGE)  # width may be cut: a low ratio is no evidence
    cut_y = (y1 <= _EDGE) | (y2 >= height - _EDGE)  # height may be cut: a high ratio is no evidence
    longest = max(width, height)
    plate = dets.kinds == PLATE
    face = dets.kinds == FACE
    bad = plate & (
        (aspect < PLATE_MIN_ASPECT) & ~cut_x | (h > PLATE_MAX_HEIGHT * longest) | (w > PLATE_MAX_WIDTH * longest)
    )
    bad |= _holds_a_smaller_plate(dets.xyxy, plate & ~bad)
    bad |= face & ((aspect < FACE_ASPECT[0]) & ~cut_x | (aspect > FACE_ASPECT[1]) & ~cut_y)
    return dets if not bad.any() else dets[~bad]


def _holds_a_smaller_plate(xyxy: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """Per box: a plate box that holds most of a much smaller plate box."""
    out = np.zeros(len(xyxy), bool)
    idx = np.flatnonzero(plate)
    if len(idx) < 2:
        return out
    b = np.asarray(xyxy, np.float64)[idx]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    held = iw * ih >= NEST_COVER * area[None, :]  # [i, j]: box i holds most of box j
    small = area[None, :] <= NEST_AREA * area[:, None]
    out[idx] = (held & small).any(axis=1)
    return out
