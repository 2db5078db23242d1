"""The job page's previews: an image scaled down, a video's frame at 1 s, from a seekable store file and from
a download stream (as the Azure store hands out), and a clear refusal for what is not media."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from _service_helpers import jpeg_bytes
from veil.jobs import previews


class _Store:
    """Blobs in memory; `seekable=False` mimics a remote store's forward-only download."""

    def __init__(self, blobs: dict[str, bytes], seekable: bool) -> None:
        self.blobs, self.seekable = blobs, seekable

    def open_read(self, container: str, name: str):
        data = io.BytesIO(self.blobs[name])
        if not self.seekable:
            data.seekable = lambda: False
        return data


def _video(seconds: float = 2.0, fps: int = 10) -> bytes:
    """Black frames, then white from 1 s on: the poster must be a white one."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(int(seconds * fps)):
            value = 255 if i >= fps else 0
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), value, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


@pytest.mark.parametrize("seekable", [True, False])
def test_previews(seekable):
    store = _Store({"photo": jpeg_bytes(1200, 600), "clip": _video(), "junk": b"not media"}, seekable)
    photo = Image.open(io.BytesIO(previews.preview(store, "c", "photo", "image")))
    assert photo.format == "JPEG" and photo.size == (previews.MAX_SIDE, previews.MAX_SIDE // 2)
    poster = Image.open(io.BytesIO(previews.preview(store, "c", "clip", "video")))
    assert poster.size == (160, 96) and np.asarray(poster.convert("L")).mean() > 200
    for media in ("image", "video"):
        with pytest.raises(ValueError, match="not a readable"):
            previews.preview(store, "c", "junk", media)
