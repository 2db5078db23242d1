"""Calibrated thresholds: monotone, 0 keeps every candidate, 1 only certain ones, 0.5 = documented raw point."""

from __future__ import annotations

import numpy as np
import pytest

from veil.engine.calibration import ANCHORS, as_raw, calibrate, raw_floor, raw_threshold


@pytest.mark.parametrize("detector", ["faces", "faces_fused", "plates", "plates_lowlight"])
def test_monotone_and_bounded(detector):
    raw = np.linspace(0, 1, 2001)
    cal = calibrate(detector, raw)
    assert np.all(np.diff(cal) >= 0)
    assert cal.min() == 0.0 and cal.max() == 1.0
    # strictly increasing between the floor and the "certain" anchor: no two thresholds mean the same
    inside = (raw > ANCHORS[detector][0][0]) & (raw < ANCHORS[detector][-1][0])
    assert np.all(np.diff(cal[inside]) > 0)


@pytest.mark.parametrize(
    "detector, raw_half", [("faces", 0.35), ("faces_fused", 0.23), ("plates", 0.20), ("plates_lowlight", 0.10)]
)
def test_half_is_the_documented_raw_point(detector, raw_half):
    assert raw_threshold(detector, 0.5) == pytest.approx(raw_half)
    assert calibrate(detector, raw_half) == pytest.approx(0.5)


def test_distant_plate_scores_pass_the_default():
    # the raw plate model scores distant plates 0.2-0.3: the default 0.5 must keep them
    assert np.all(calibrate("plates", np.array([0.2, 0.25, 0.3])) >= 0.5)


@pytest.mark.parametrize("detector", ["faces", "faces_fused", "plates", "plates_lowlight"])
def test_zero_keeps_every_candidate_one_only_certain(detector):
    assert raw_threshold(detector, 0.0) == raw_floor(detector)
    assert calibrate(detector, raw_floor(detector)) == 0.0
    certain = ANCHORS[detector][-1][0]
    assert raw_threshold(detector, 1.0) == pytest.approx(certain)
    assert calibrate(detector, certain - 0.01) < 1.0
    assert calibrate(detector, certain) == 1.0


@pytest.mark.parametrize("detector", ["faces", "faces_fused", "plates", "plates_lowlight"])
def test_inverse_round_trip(detector):
    for t in np.linspace(0, 1, 21):
        assert calibrate(detector, raw_threshold(detector, t)) == pytest.approx(t, abs=1e-5)


def test_out_of_range_threshold_is_rejected():
    with pytest.raises(ValueError, match="0..1"):
        raw_threshold("faces", 1.5)


def test_low_light_plate_scores_merge_on_the_plate_scale():
    # a dark frame's plate at raw 0.10 on the corrected copy counts as a daylight raw 0.20 (the default)
    raw = np.array([0.025, 0.10, 0.45, 0.80])
    assert np.allclose(
        calibrate("plates", as_raw("plates", raw, "plates_lowlight")), calibrate("plates_lowlight", raw), atol=1e-6
    )
    assert as_raw("plates", 0.10, "plates_lowlight") == pytest.approx(0.20)
