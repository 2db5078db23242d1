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

from veil.engine.config import MediaLimits
from veil.engine.probe import probe
from veil.jobs.archive import ArchiveError
from veil.jobs.pricing import MediaError, Prices, cost_of

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
    return {
        "jpg": _image(d / "a.jpg"),
        "png": _image(d / "b.png", "PNG"),
        "v59": _video(d / "v59.mp4", 59),
        "v60": _video(d / "v60.mp4", 60),
        "v61": _video(d / "v61.mp4", 61),
        "v1": _video(d / "v1.mp4", 1),
    }


def test_probe(media) -> None:
    assert probe(media["jpg"]).kind == "image" and probe(media["jpg"]).seconds == 0
    info = probe(media["v61"])
    assert (info.kind, info.width, info.height) == ("video", 64, 48)
    assert info.seconds == pytest.approx(61, abs=0.6)


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
    corrupt = media["v1"].read_bytes()[:600]  # truncated video: costs nothing, its task fails alone
    zipped = tmp_path / "in.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(media["jpg"], "a.jpg")
        zf.write(media["png"], "b.png")
        zf.write(media["v61"], "v61.mp4")
        zf.writestr("broken.mp4", corrupt)
    # 2 + 2 + 14 + 0 (broken) + 3 usable files * 1
    assert cost_of(zipped, PRICES) == 21
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


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and no pixel data): what a decompression bomb shows first."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _animation(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (32, 24), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_what_the_engine_cannot_process_is_refused_at_pricing(tmp_path: Path, media) -> None:
    """Issue 9 finding 7: decided by content and a real decode, not by what FFmpeg will open."""
    (tmp_path / "notes.jpg").write_text("hello, not a picture\n" * 50)  # image2 would read it as a video
    with pytest.raises(MediaError, match="not an image or a video"):
        cost_of(tmp_path / "notes.jpg")
    (tmp_path / "cut.jpg").write_bytes(media["jpg"].read_bytes()[:-300])
    with pytest.raises(MediaError, match="corrupt or truncated"):
        cost_of(tmp_path / "cut.jpg")
    with pytest.raises(MediaError, match="unsupported image format GIF.*convert an animation to MP4"):
        cost_of(_animation(tmp_path / "anim.gif", "GIF"))
    with pytest.raises(MediaError, match="WEBP with 3 frames.*not supported"):
        cost_of(_animation(tmp_path / "anim.webp", "WEBP"))


def test_archive_of_unusable_files_is_refused(tmp_path: Path, media) -> None:
    zipped = tmp_path / "in.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("notes.jpg", "hello, not a picture\n" * 50)
        zf.writestr("cut.jpg", media["jpg"].read_bytes()[:-300])
    with pytest.raises(ArchiveError, match="no file in the archive.*'notes.jpg': not an image or a video"):
        cost_of(zipped)


def test_pixel_limits(tmp_path: Path, media) -> None:
    """Issue 9 finding 10: refused from the header, before any pixel is decoded."""
    (tmp_path / "bomb.png").write_bytes(_png_header(11_000, 11_000))  # 121 MP in 67 bytes
    with pytest.raises(MediaError, match="image too large: 11000 x 11000 pixels \\(121 MP; at most 120 MP\\)"):
        cost_of(tmp_path / "bomb.png")
    assert cost_of(media["png"], media=MediaLimits(max_image_pixels=64 * 48)) == 1
    with pytest.raises(MediaError, match="image too large"):
        cost_of(media["png"], media=MediaLimits(max_image_pixels=64 * 48 - 1))
    with pytest.raises(MediaError, match="video frames too large: 64 x 48 pixels"):
        cost_of(media["v1"], media=MediaLimits(max_video_frame_pixels=1000))
