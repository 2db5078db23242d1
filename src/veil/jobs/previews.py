"""Small JPEG previews for the admin panel: an image scaled down, or a video's frame at POSTER_SECONDS."""

from __future__ import annotations

import io
import shutil
import tempfile

from PIL import Image, ImageOps

MAX_SIDE = 480
POSTER_SECONDS = 1.0  # the first frame is often black or a title


def preview(store, container: str, blob: str, media: str) -> bytes:
    """A JPEG at most MAX_SIDE pixels on its long side; ValueError when the blob can't be read as `media`.

    The embedded store's files are read in place; other stores' blobs are downloaded to a temporary file.
    """
    with store.open_read(container, blob) as src, tempfile.TemporaryFile() as tmp:
        if not src.seekable():  # a remote store's download: MP4 indexes may sit at the end, so copy first
            shutil.copyfileobj(src, tmp, 1024 * 1024)
            tmp.seek(0)
        stream = src if src.seekable() else tmp
        image = _video_frame(stream) if media == "video" else _image(stream)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=80)
    return out.getvalue()


def _image(stream) -> Image.Image:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    try:
        with Image.open(stream) as img:
            return ImageOps.exif_transpose(img).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from None


def _video_frame(stream) -> Image.Image:
    import av

    poster = None
    try:
        with av.open(stream) as container:
            for frame in container.decode(video=0):  # decoding a second of frames beats seeking's keyframe jumps
                poster = frame
                if frame.time is None or frame.time >= POSTER_SECONDS:
                    break
    except Exception as exc:  # av.error.FFmpegError and friends
        raise ValueError(f"not a readable video ({type(exc).__name__})") from None
    if poster is None:
        raise ValueError("the video has no frames")
    return poster.to_image()
