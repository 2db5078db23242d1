"""The plates' low-light view: only dark or colour-cast frames get one, and it restores contrast."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from veil.engine.plates import low_light_view


def _plate_scene(gain: float, cast=(1.0, 1.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(90, 150, (360, 640, 3)).astype(np.uint8)
    image[200:230, 300:400] = 235  # a white plate ...
    cv2.putText(image, "B 123 XY", (305, 224), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 2)  # ... with text
    return np.clip(image * (gain * np.float32(cast)), 0, 255).astype(np.uint8)


def test_a_normal_frame_gets_no_extra_view():
    assert low_light_view(_plate_scene(1.0)) is None


def test_a_dark_red_cast_frame_gets_a_balanced_brighter_view():
    dark = _plate_scene(0.3, cast=(1.0, 0.6, 0.45))
    view = low_light_view(dark)
    assert view is not None and view.shape == dark.shape and view.dtype == np.uint8
    means = view.reshape(-1, 3).mean(axis=0)
    assert means.max() / means.min() < 1.15  # the red cast is balanced out
    assert (
        view.mean() > 1.2 * dark.mean()
    )  # brighter (less than CLAHE alone: the blur first takes out the noise it would lift)
    plate = (slice(200, 230), slice(300, 400))
    assert view[plate].astype(int).std() > dark[plate].astype(int).std()  # the characters stand out more


def test_a_plate_in_a_darkened_dash_cam_frame_is_found(shared_data, detection_models):
    # bench/make_lowlight.py step 1 of a dev frame: the plain plate pass scores this plate 0.09 raw
    # (below the default's 0.20); the low-light pass, with its own calibration, keeps it.
    import importlib.util
    import json

    from veil.engine.config import ModelConfig
    from veil.engine.detect import Detector
    from veil.engine.slicing import iou_matrix

    spec = importlib.util.spec_from_file_location(
        "make_lowlight", Path(__file__).parents[1] / "bench" / "make_lowlight.py"
    )
    make_lowlight = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_lowlight)
    item = json.loads((shared_data / "ro_dashcam_plates" / "labels.json").read_text())["items"][6]
    truth = np.array([[73.0, 396.0, 188.0, 438.0]], np.float32)
    assert np.abs(np.asarray(item["plates"][0]) - truth[0]).max() < 1
    dark = make_lowlight.degrade(cv2.imread(str(shared_data / "ro_dashcam_plates" / item["file"])), 1, seed=6)
    image = cv2.cvtColor(dark, cv2.COLOR_BGR2RGB)
    detector = Detector(ModelConfig(enable_lp=True, blur_face=False))
    plain = detector.detect_plates(image, side=1280)  # the single pass video uses: no low-light view
    assert not len(plain) or iou_matrix(plain.xyxy, truth).max() < 0.5, "precondition: the plain pass misses it"
    found = detector.detect_plates(image)
    assert len(found) and iou_matrix(found.xyxy, truth).max() >= 0.5, found.xyxy
