"""The engine's tuning is part of the one settings system (`veil.settings.EngineSettings`): every VEIL_* the
engine uses, set through the environment, takes effect; a bad value stops a command at start-up with one line
naming the variable (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from veil.settings import EngineSettings

_OBSERVE = """
import json
from veil.engine import runtime, weights, video_detect
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE
from veil.settings import engine_settings
fd = video_detect.FrameDetector(lambda *a, **k: None, ModelConfig(slicing=True), (1920, 1080), 30.0,
                                frozenset({FACE, PLATE}), {FACE, PLATE})
print(json.dumps({
    "execution_provider": runtime.resolve_provider(),
    "openvino_precision": runtime._openvino_precision(),
    "ort_threads": runtime.thread_count(),
    "model_dir": str(weights.model_dir()),
    "x264_preset": engine_settings().x264_preset,
    "video_face_side": video_detect.detect_side(FACE, 100),
    "video_plate_side": video_detect.detect_side(PLATE, 100),
    "video_detect_fps": fd.strides[FACE], "video_plate_detect_fps": fd.strides[PLATE],
    "video_face_scan_fps": fd.scans[FACE], "video_plate_scan_fps": fd.scans[PLATE],
    "video_tile_fps": fd.tile_scans[FACE], "video_full_scan_fps": fd.full_scans[FACE],
}))
"""
# field: (environment value, what the engine shows at 30 fps; a stride/scan is frames between runs)
CASES = {
    "execution_provider": ("cpu", "cpu"),
    "openvino_precision": ("f32", "f32"),
    "ort_threads": ("3", 3),
    "model_dir": ("/tmp/veil-models-elsewhere", "/tmp/veil-models-elsewhere"),
    "x264_preset": ("ultrafast", "ultrafast"),
    "video_face_side": ("320", 320),
    "video_plate_side": ("480", 480),
    "video_detect_fps": ("3", 10),
    "video_plate_detect_fps": ("10", 3),
    "video_face_scan_fps": ("1", 30),
    "video_plate_scan_fps": ("2.5", 12),
    "video_tile_fps": ("0.5", 60),
    "video_full_scan_fps": ("0.25", 120),
}


def _observe(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    out = subprocess.run(
        [sys.executable, "-c", _OBSERVE], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_engine_setting_takes_effect_through_the_environment():
    assert set(CASES) == set(EngineSettings.model_fields)  # a new engine setting needs a case here
    default = _observe({})
    changed = _observe({f"VEIL_{name.upper()}": value for name, (value, _) in CASES.items()})
    for name, (_, expected) in CASES.items():
        assert changed[name] == expected, name
        assert default[name] != expected, name  # the control: without the variable the engine differs


def test_a_bad_value_stops_a_command_with_one_line_naming_it(tmp_path):
    veil = Path(sys.executable).with_name("veil")
    for name, value in (("VEIL_VIDEO_FACE_SIDE", "abc"), ("VEIL_X264_PRESET", "turbo"), ("VEIL_ORT_THREADS", "-1")):
        out = subprocess.run(
            [str(veil), "detect", "x.jpg", "--json", str(tmp_path / "d.json")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, name: value},
        )
        assert out.returncode != 0
        assert name in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_veil_config_prints_the_effective_settings_with_secrets_masked():
    veil = Path(sys.executable).with_name("veil")
    out = subprocess.run(
        [str(veil), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VEIL_ORT_THREADS": "2", "VEIL_ADMIN_TOKEN": "very-secret-token"},
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert rows["VEIL_ORT_THREADS"].split()[1:] == ["2", "(environment)"]
    assert rows["VEIL_X264_PRESET"].split()[1:] == ["veryfast", "(default)"]
    assert "****" in rows["VEIL_ADMIN_TOKEN"] and "very-secret-token" not in out.stdout
    assert set(rows) >= {f"VEIL_{name.upper()}" for name in EngineSettings.model_fields}
