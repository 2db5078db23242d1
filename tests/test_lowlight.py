"""The plates' low-light view: only dark or colour-cast frames get one, and it restores contrast."""

from __future__ import annotations

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
    assert view.mean() > 1.3 * dark.mean()  # brighter (less than CLAHE alone: the blur first takes out the noise it lifts)
    plate = (slice(200, 230), slice(300, 400))
    assert view[plate].astype(int).std() > dark[plate].astype(int).std()  # the characters stand out more
