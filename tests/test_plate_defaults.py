"""With `{"enable_lp": true}` alone, plates are tracked (lp_track defaults to true): no plate of the dev car clip
can be detected again on its output. Checked with the photo detector (more views and passes than the video
pipeline), at a lower bar than the anonymizer's (0.4: a plate a person might still read), on every third
output frame, on ONNX Runtime's CPU provider (the figures' runtime: bfloat16
runtimes score a few candidates differently), in a fresh process so that no cached detector is reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIP = "videos/intel_car-detection.mp4"
_SCRIPT = """
import json, sys
from pathlib import Path
import av
from veil.engine.config import ModelConfig
from veil.engine.detect import get_detector
from veil.engine.video import anonymize_video

src, dst, config, every = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
anonymize_video(src, dst, ModelConfig(**config))
detector = get_detector(ModelConfig(blur_face=False, enable_lp=True, lp_threshold=0.4))
found = {}
with av.open(str(dst)) as container:
    for index, frame in enumerate(container.decode(video=0)):
        if index % every == 0:
            plates = detector.detect(frame.to_ndarray(format="rgb24"))
            if len(plates):
                found[index] = plates.xyxy.round().tolist()
print(json.dumps(found))
"""


def _plates_found_again(shared_data, tmp_path, config: dict, every: int) -> dict[str, list]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _SCRIPT,
            str(shared_data / CLIP),
            str(tmp_path / "out.mp4"),
            json.dumps(config),
            str(every),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        env={**os.environ, "VEIL_EXECUTION_PROVIDER": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_plate_of_the_car_clip_is_detectable_on_its_output(detection_models, shared_data, tmp_path):
    assert _plates_found_again(shared_data, tmp_path, {"enable_lp": True}, every=3) == {}


def test_control_untracked_plates_leak_a_frame(detection_models, shared_data, tmp_path):
    """The check above can fail: untracked (the vendor's lp_track default), frame 96's white car keeps a
    readable rear plate for the detector (0.48 there; tracked, nothing on these frames scores even 0.3)."""
    found = _plates_found_again(shared_data, tmp_path, {"enable_lp": True, "lp_track": False}, every=3)
    assert "96" in found
