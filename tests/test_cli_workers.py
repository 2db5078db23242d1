"""`veil anonymize` over several photos runs them side by side in worker processes (issue 23): the same
bytes as one photo at a time, the same one line per problem, and Ctrl-C or SIGTERM still end the batch
cleanly (no traceback from a worker, no partial file). Real photos from ../shared/data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

VEIL = Path(sys.executable).parent / "veil"
PHOTOS = [
    "dlib_faces/images/dlib_2008_001322.jpg",
    "dlib_faces/images/dlib_2008_001009.jpg",
    "dlib_faces/images/dlib_2007_007763.jpg",
    "dlib_faces/images/dlib_2008_002079.jpg",
    "openalpr_plates/images/br_JOG9221.jpg",
    "openalpr_plates/images/br_JRD2238.jpg",
    "openalpr_plates/images/br_MXQ1601.jpg",
]


@pytest.fixture()
def folder(shared_data, tmp_path) -> Path:
    """The photos in `in/` (two in a subfolder), a corrupt JPEG and a text file beside them."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for n, name in enumerate(PHOTOS):
        shutil.copy(shared_data / name, (root / "sub" if n < 2 else root) / Path(name).name)
    (root / "broken.jpg").write_bytes((shared_data / PHOTOS[0]).read_bytes()[:2000])
    (root / "notes.txt").write_text("not a photo")
    return root


def _start(folder: Path, out: Path, workers: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VEIL), "anonymize", str(folder), "-o", str(out), "--workers", workers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _photo_workers(process: subprocess.Popen) -> list[psutil.Process]:
    return [c for c in psutil.Process(process.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def _until_first_output(process: subprocess.Popen, out: Path) -> None:
    while not list(out.rglob("*.jpg")) and process.poll() is None:
        time.sleep(0.02)


def _workers_seen(process: subprocess.Popen) -> int:
    """Polls the command until it ends: the most photo worker processes it had at once."""
    most = 0
    while process.poll() is None:
        try:
            most = max(most, len(_photo_workers(process)))
        except psutil.Error:
            continue
        time.sleep(0.05)
    return most


def _run(folder: Path, out: Path, workers: str) -> tuple[subprocess.CompletedProcess, int]:
    process = _start(folder, out, workers)
    most = _workers_seen(process)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), most


def test_photos_side_by_side_give_what_one_at_a_time_gives(detection_models, folder, tmp_path):
    side_by_side, most = _run(folder, tmp_path / "two", "2")
    one_by_one, none = _run(folder, tmp_path / "one", "1")
    assert most == 2 and none == 0  # two worker processes, or none
    for result in (side_by_side, one_by_one):
        assert result.returncode == 1, result.stderr  # the corrupt photo
        assert "Traceback" not in result.stderr
        assert [line for line in result.stderr.splitlines() if "error:" in line][0].count("broken.jpg") == 1
        assert sum("error:" in line for line in result.stderr.replace("\r", "\n").splitlines()) == 1
        assert f"skipped (not an image, a video or an archive): {folder / 'notes.txt'}" in result.stdout
        assert sum(" -> " in line for line in result.stdout.splitlines()) == len(PHOTOS)
    written = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.jpg"))
    assert len(written) == len(PHOTOS) and Path("sub") / Path(PHOTOS[0]).name in written  # layout kept
    for rel in written:
        assert (tmp_path / "two" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel


def _more_photos(folder: Path) -> None:
    """The good photos copied until there are 40 in the top folder: a batch long enough to act on mid-way."""
    (folder / "broken.jpg").unlink()
    for n in range(3):
        for photo in list(folder.glob("*.jpg")):
            shutil.copy(photo, folder / f"{photo.stem}-{n}.jpg")


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_mid_batch_ends_it_cleanly(detection_models, folder, tmp_path, sig, status):
    _more_photos(folder)
    out = tmp_path / "out"
    process = _start(folder, out, "2", start_new_session=True)  # its own process group, as a terminal gives it
    try:
        _until_first_output(process, out)
        # Ctrl-C reaches the whole group (the workers too); SIGTERM only the command
        os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert "Traceback" not in err
    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in outputs if p.name.startswith(".")]  # no partial file
    assert 0 < len(outputs) < len(list(folder.rglob("*.jpg")))  # stopped before the end
    for path in outputs:  # every output written whole
        with Image.open(path) as image:
            image.load()


def test_a_worker_killed_mid_batch_costs_only_a_retry(detection_models, folder, tmp_path):
    """kill -9 of a photo worker (the out-of-memory killer's way): the pool breaks, the photos then in hand are
    tried once more in a new one, and every photo is written, byte for byte as one at a time writes it."""
    _more_photos(folder)
    out = tmp_path / "out"
    process = _start(folder, out, "2")
    try:
        _until_first_output(process, out)
        written_before = len(list(out.rglob("*.jpg")))
        _photo_workers(process)[0].kill()
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    photos = sorted(p.relative_to(folder) for p in folder.rglob("*.jpg"))
    assert process.returncode == 0 and "Traceback" not in stderr and "error:" not in stderr, stderr
    assert written_before < len(photos)  # the kill came mid-batch
    assert sorted(p.relative_to(out) for p in out.rglob("*.jpg")) == photos
    again = _run(folder, tmp_path / "one", "1")[0]
    assert again.returncode == 0, again.stderr
    for rel in photos:
        assert (out / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
