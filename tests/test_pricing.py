"""Pricing: images, started video minutes, archives (summed member by member), bad input."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from veil.jobs.archive import ArchiveError
from veil.jobs.pricing import MediaError, Prices, cost_of, probe

PRICES = Prices(per_image=2, per_video_minute=7, per_archive_file=1, minimum_per_job=3)


def _image(path: Path, fmt: str = "JPEG") -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, fmt)
    return path


def _video(path: Path, seconds: int, fps: int = 2) -> Path:
    """A tiny real H.264 MP4 lasting exactly `seconds`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {"jpg": _image(d / "a.jpg"), "png": _image(d / "b.png", "PNG"),
            "v59": _video(d / "v59.mp4", 59), "v60": _video(d / "v60.mp4", 60), "v61": _video(d / "v61.mp4", 61),
            "v1": _video(d / "v1.mp4", 1)}


def test_probe(media) -> None:
    with open(media["jpg"], "rb") as f:
        assert probe(f) == ("image", 0.0)
    with open(media["v61"], "rb") as f:
        kind, seconds = probe(f)
    assert kind == "video" and seconds == pytest.approx(61, abs=0.6)


def test_images_and_started_minutes(media) -> None:
    assert cost_of(media["jpg"]) == 1  # default price list
    assert cost_of(media["v1"]) == 5
    assert cost_of(media["png"], Prices(per_image=4, minimum_per_job=0)) == 4
    assert cost_of(media["v1"], PRICES) == 7
    assert cost_of(media["v59"], PRICES) == 7
    assert cost_of(media["v60"], PRICES) == 7  # exactly one minute: one started minute
    assert cost_of(media["v61"], PRICES) == 14  # the 61st second starts a second minute
    assert cost_of(media["jpg"], PRICES) == 3  # minimum per job


def test_archives_sum_their_members(tmp_path: Path, media) -> None:
    corrupt = media["v1"].read_bytes()[:600]  # truncated video: priced as one image, fails later alone
    zipped = tmp_path / "in.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(media["jpg"], "a.jpg")
        zf.write(media["png"], "b.png")
        zf.write(media["v61"], "v61.mp4")
        zf.writestr("broken.mp4", corrupt)
    # 2 + 2 + 14 + 2 (broken, as an image) + 4 files * 1
    assert cost_of(zipped, PRICES) == 24
    tgz = tmp_path / "in.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(media["jpg"], "a.jpg")
        tf.add(media["v1"], "v1.mp4")
    assert cost_of(tgz) == 1 + 5
    assert sorted(tmp_path.iterdir()) == sorted([zipped, tgz])  # no member left on disk


def test_refused_archives_raise(tmp_path: Path, media) -> None:
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        zf.write(media["jpg"], "a.jpg")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as inner:
            inner.write(media["jpg"], "x.jpg")
        zf.writestr("more.zip", buf.getvalue())
    with pytest.raises(ArchiveError, match="'more.zip': is itself an archive"):
        cost_of(nested)
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.write(media["jpg"], "../a.jpg")
    with pytest.raises(ArchiveError, match="unsafe member name"):
        cost_of(slip)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ArchiveError, match="holds no files"):
        cost_of(empty)


def test_bad_top_level_input(tmp_path: Path, media) -> None:
    (tmp_path / "notes.txt").write_text("hello, not a picture\n" * 10)
    with pytest.raises(MediaError, match="not an image or a video"):
        cost_of(tmp_path / "notes.txt")
    (tmp_path / "cut.mp4").write_bytes(media["v1"].read_bytes()[:600])
    with pytest.raises(MediaError):
        cost_of(tmp_path / "cut.mp4")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MediaError):
        cost_of(tmp_path / "empty.jpg")
