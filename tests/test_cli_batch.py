"""`veil anonymize` and `veil detect` as a new user tries them (issue 22 items 1, 2, 3, 4 and 6): archives,
folders, a read-only output folder, signals, the progress bar, option errors, `python -m veil`. Real photos
from ../shared/data; archives and clips built here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from _archives import write_archive
from test_video import make_clip

VEIL = Path(sys.executable).parent / "veil"
FACES = "dlib_faces/images/dlib_2008_001322.jpg"  # 500 x 375, three faces
TALL = "dlib_faces/images/dlib_2008_001009.jpg"  # 360 x 480
VIDEO = "videos/intel_car-detection.mp4"
NO_PLATES = ("--no-enable-lp",)  # photos of faces: the plate detector only costs time


def _veil(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(VEIL), *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture()
def photos(shared_data, tmp_path) -> Path:
    """Two real photos of different sizes in `tmp_path`."""
    shutil.copy(shared_data / FACES, tmp_path / "faces.jpg")
    shutil.copy(shared_data / TALL, tmp_path / "tall.jpg")
    return tmp_path


def _members(folder: Path) -> list[tuple[str, bytes]]:
    return [(name, (folder / name).read_bytes()) for name in ("faces.jpg", "tall.jpg")]


# ----------------------------------------------------------------------------- 1. archives
def test_archives_give_one_output_per_member_and_are_never_read_as_media(detection_models, photos):
    with zipfile.ZipFile(photos / "stored.zip", "w", zipfile.ZIP_STORED) as z:  # what FFmpeg read as a slideshow
        for name, data in _members(photos):
            z.writestr(name, data)
    with zipfile.ZipFile(photos / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as z:  # was "not an image"
        for name, data in _members(photos):
            z.writestr(name, data)
    write_archive(photos / "pics.tar.gz", "tar.gz", _members(photos))
    write_archive(photos / "bad.zip", "zip", [("a/faces.jpg", (photos / "faces.jpg").read_bytes())])
    result = _veil(
        "anonymize", "stored.zip", "deflated.zip", "pics.tar.gz", "bad.zip", *NO_PLATES, "-o", "out", cwd=photos
    )
    assert result.returncode == 1
    assert "error: bad.zip: 'a/faces.jpg': is inside a folder" in result.stderr  # the service's archive rules
    assert "Traceback" not in result.stderr
    outputs = sorted(p.relative_to(photos / "out").as_posix() for p in (photos / "out").rglob("*") if p.is_file())
    assert outputs == [
        "deflated/faces.jpg",
        "deflated/tall.jpg",
        "pics/faces.jpg",
        "pics/tall.jpg",
        "stored/faces.jpg",
        "stored/tall.jpg",
    ]
    for folder in ("deflated", "pics", "stored"):
        for name, size in (("faces.jpg", (500, 375)), ("tall.jpg", (360, 480))):
            with Image.open(photos / "out" / folder / name) as image:
                assert (image.format, image.size) == ("JPEG", size)
    assert "stored.zip/faces.jpg -> out/stored/faces.jpg (3 regions redacted)" in result.stdout


def test_the_engine_refuses_archive_content_as_media(photos):
    from veil.engine.errors import MediaError
    from veil.engine.probe import media_kind, probe

    zipped = photos / "same_size.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:  # FFmpeg's mjpeg demuxer opens this one
        z.writestr("one.jpg", (photos / "faces.jpg").read_bytes())
        z.writestr("two.jpg", (photos / "faces.jpg").read_bytes())
    for check in (media_kind, probe):
        with pytest.raises(MediaError, match="a zip archive, not an image or a video"):
            check(zipped)


# ----------------------------------------------------------------------------- 2. folders
def test_a_folder_is_walked_with_patterns_its_layout_kept_and_non_media_listed(detection_models, photos):
    tree = photos / "photos"
    (tree / "day1" / "raw").mkdir(parents=True)
    shutil.copy(photos / "faces.jpg", tree / "faces.jpg")
    shutil.copy(photos / "tall.jpg", tree / "day1" / "raw" / "tall.jpg")
    shutil.copy(photos / "tall.jpg", tree / "day1" / "skip_me.jpg")
    (tree / "day1" / "notes.txt").write_text("a shopping list, not a picture\n" * 20)
    result = _veil("anonymize", "photos", "--exclude", "skip_*", *NO_PLATES, "-o", "out", cwd=photos)
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.relative_to(photos / "out").as_posix() for p in (photos / "out").rglob("*") if p.is_file())
    assert outputs == ["day1/raw/tall.jpg", "faces.jpg"]
    assert "skipped (not an image, a video or an archive): photos/day1/notes.txt" in result.stdout
    only = _veil("anonymize", "photos", "--include", "day1/*", *NO_PLATES, "-o", "only", cwd=photos)
    assert only.returncode == 0, only.stderr
    assert sorted(p.name for p in (photos / "only").rglob("*.jpg")) == ["skip_me.jpg", "tall.jpg"]


# ----------------------------------------------------------------------------- 3. a read-only output folder
def test_a_read_only_output_folder_is_one_line_per_file_and_the_batch_goes_on(detection_models, photos):
    """The output folder is a read-only bind mount (in a user namespace: root ignores file modes)."""
    (photos / "ro").mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for a read-only mount: {probe.stderr.decode().strip()}")
    command = (
        f"mount --bind ro ro && mount -o remount,bind,ro ro && exec {VEIL} anonymize faces.jpg tall.jpg "
        f"{' '.join(NO_PLATES)} -o ro"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], cwd=photos, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert lines == [
        "error: faces.jpg: cannot write into ro: Read-only file system",
        "error: tall.jpg: cannot write into ro: Read-only file system",
    ]


# ----------------------------------------------------------------------------- 4. signals, stdout, bar, options
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_leaves_no_part_file_and_exits_128_plus_its_number(
    detection_models, shared_data, tmp_path, sig, status
):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(VEIL), "anonymize", str(shared_data / VIDEO), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not list(out.glob(".*.part")) and process.poll() is None:
            time.sleep(0.02)  # until the video's output is being written
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []


def test_detect_json_dash_writes_to_standard_output(detection_models, photos):
    result = _veil("detect", "faces.jpg", *NO_PLATES, "--json", "-", cwd=photos)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["items"][0]["faces"]) == 3
    assert not (photos / "-").exists()


def test_the_bar_moves_through_each_file_and_counts_regions_in_words(detection_models, photos):
    make_clip(photos / "clip.mp4", frames=60, size=(160, 120))
    with Image.open(photos / "faces.jpg") as image:  # one face of the three
        image.crop((330, 120, 470, 290)).save(photos / "one.jpg", quality=95)
    result = _veil("anonymize", "one.jpg", "clip.mp4", *NO_PLATES, "-o", "out", cwd=photos)
    assert result.returncode == 0, result.stderr
    assert "one.jpg -> out/one.jpg (1 region redacted)" in result.stdout
    states = result.stderr.replace("\r", "\n").splitlines()
    during = [s for s in states if s.startswith("2/2 clip.mp4:")]
    percents = {int(s.split(":")[1].split("%")[0]) for s in during}
    assert any(50 < p < 100 for p in percents), during  # the video's own progress, not a count of files
    single = _veil("anonymize", "clip.mp4", *NO_PLATES, "-o", "single", cwd=photos)
    assert single.returncode == 0 and "clip.mp4:" in single.stderr
    assert "/s" not in single.stderr and "/s" not in result.stderr  # no "1895%/s"


def test_option_errors_name_what_the_user_typed(photos):
    """Through the real command, on a real photo: help shows only the options that do something there, and a
    misspelt --config key, an out-of-range flag and a missing --config file each get a one-line usage error."""
    detect_help = _veil("detect", "--help", cwd=photos).stdout
    assert "--blur-threshold" in detect_help
    assert "--style" not in detect_help and "--video-crf" not in detect_help
    assert "--style" in _veil("anonymize", "--help", cwd=photos).stdout
    typo = _veil("anonymize", "faces.jpg", "-o", "out", "--config", '{"blur_treshold": 0.3}', cwd=photos)
    assert typo.returncode == 2
    assert "unknown key 'blur_treshold', did you mean 'blur_threshold'?" in typo.stderr
    flag = _veil("anonymize", "faces.jpg", "-o", "out", "--blur-threshold", "1.5", cwd=photos)
    assert flag.returncode == 2 and "'--blur-threshold'" in flag.stderr and "--config" not in flag.stderr
    missing = _veil("anonymize", "faces.jpg", "-o", "out", "--config", "missing.json", cwd=photos)
    assert missing.returncode == 2
    assert "missing.json' does not exist" in missing.stderr and "not valid JSON" not in missing.stderr
    for result in (typo, flag, missing):
        assert "Traceback" not in result.stderr
    assert not (photos / "out").exists()  # nothing was written


# ----------------------------------------------------------------------------- 6. python -m veil
def test_python_dash_m_veil_is_the_veil_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "veil", "anonymize", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: veil anonymize")
