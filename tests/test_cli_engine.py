"""`veil anonymize` and `veil detect --json` as a user runs them: subprocesses on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

VEIL = Path(sys.executable).parent / "veil"
FACES = "dlib_faces/images/dlib_2008_001322.jpg"
PLATE_PHOTO = "openalpr_plates/images/br_JOG9221.jpg"


@pytest.fixture()
def inputs(shared_data, tmp_path) -> Path:
    """A work folder with two real photos and one corrupt file, referenced by relative paths."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data / FACES, folder / "faces.jpg")
    shutil.copy(shared_data / PLATE_PHOTO, folder / "car.jpg")
    (folder / "broken.jpg").write_bytes((shared_data / FACES).read_bytes()[:600])
    return tmp_path


def _veil(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VEIL), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_detect_json_has_exactly_the_documented_format(detection_models, inputs):
    result = _veil("detect", "in/faces.jpg", "in/car.jpg", "--enable-lp", "--json", "out.json", cwd=inputs)
    assert result.returncode == 0, result.stderr
    data = json.loads((inputs / "out.json").read_text())
    assert list(data) == ["items"]
    faces, car = data["items"]
    for item, name, size in ((faces, "in/faces.jpg", (500, 375)), (car, "in/car.jpg", (1280, 1280))):
        assert set(item) == {"file", "width", "height", "faces", "plates"}
        assert item["file"] == name  # as given on the command line
        assert (item["width"], item["height"]) == size
        for row in item["faces"] + item["plates"]:
            x1, y1, x2, y2, score = row
            assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1] and 0 < score <= 1
    assert len(faces["faces"]) == 3
    assert any(abs(row[0] - 522) < 30 and abs(row[1] - 572) < 30 for row in car["plates"])


def test_detect_reports_a_corrupt_file_and_goes_on(detection_models, inputs):
    result = _veil("detect", "in/broken.jpg", "in/faces.jpg", "--json", "out.json", cwd=inputs)
    assert result.returncode == 1
    assert "in/broken.jpg" in result.stderr and "corrupt or truncated" in result.stderr
    assert "Traceback" not in result.stderr
    broken, faces = json.loads((inputs / "out.json").read_text())["items"]
    assert broken["file"] == "in/broken.jpg" and "corrupt" in broken["error"]
    assert len(faces["faces"]) == 3


def test_anonymize_writes_every_good_file_and_fails_clearly_on_a_corrupt_one(detection_models, inputs):
    result = _veil("anonymize", "in/faces.jpg", "in/broken.jpg", "in/car.jpg", "--enable-lp", "-o", "out", cwd=inputs)
    assert result.returncode == 1
    assert "error: in/broken.jpg: cannot decode image" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (inputs / "out").iterdir()) == ["car.jpg", "faces.jpg"]
    for name in ("faces.jpg", "car.jpg"):
        with Image.open(inputs / "out" / name) as im:
            assert im.format == "JPEG"
    # The anonymized photo no longer has a detectable face.
    check = _veil("detect", "out/faces.jpg", "--json", "check.json", cwd=inputs)
    assert check.returncode == 0, check.stderr
    assert json.loads((inputs / "check.json").read_text())["items"][0]["faces"] == []


def test_anonymize_takes_config_json_and_refuses_to_overwrite_its_input(inputs):
    config = json.dumps({"blur_face": False, "enable_lp": False})
    result = _veil("anonymize", "in/faces.jpg", "--config", config, "-o", "in", cwd=inputs)
    assert result.returncode == 1 and "overwrite the input" in result.stderr
    bad = _veil("anonymize", "in/faces.jpg", "--config", '{"blur_fase": true}', "-o", "out", cwd=inputs)
    assert bad.returncode == 2 and "blur_fase" in bad.stderr
