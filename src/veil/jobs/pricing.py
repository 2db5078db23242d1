"""Pricing: what a job costs in credits, known as soon as its upload is committed.

Default price list (each value is a `VEIL_PRICE_*` setting, see `veil.settings`):

| what | credits |
|---|---|
| an image (JPEG, PNG, WebP, BMP, TIFF, HEIC, ...) | 1 (`per_image`) |
| a video, per *started* minute (0:59 → 1 minute, 1:00.5 → 2) | 5 (`per_video_minute`) |
| each file inside an archive, on top of its own image/video price | 0 (`per_archive_file`) |
| the least any job costs | 1 (`minimum_per_job`) |

An archive costs the sum of its files. A file inside an archive that is neither a readable image
nor a readable video is priced as one image: the job is accepted, and that file's task fails
alone when it is processed. A top-level file that is neither raises `MediaError`; an archive
that is refused raises `ArchiveError` (both name the problem).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, Field

from ..engine.errors import MediaError
from .archive import ArchiveError, ArchiveLimits, is_archive, iter_member_files

__all__ = ["ArchiveError", "MediaError", "Prices", "cost_of", "cost_of_members", "probe"]


class Prices(BaseModel):
    """The price list, in credits."""

    per_image: int = Field(1, ge=0, description="Credits per image.")
    per_video_minute: int = Field(5, ge=0, description="Credits per started minute of video.")
    per_archive_file: int = Field(0, ge=0, description="Extra credits per file inside an archive.")
    minimum_per_job: int = Field(1, ge=0, description="The least a job costs.")


def cost_of(path: Path, prices: Prices | None = None, limits: ArchiveLimits | None = None) -> int:
    """Credits the job whose input is `path` costs (an image, a video or an archive of them).

    Archives are read member by member (never extracted as a tree) with every check of
    `expand_archive`, so a refused archive raises `ArchiveError` here, before approval.
    """
    prices = prices or Prices()
    if is_archive(path):
        total = count = 0
        for name, stream in iter_member_files(path, limits, work_dir=path.parent):
            count += 1
            total += _member_price(stream, prices)
        if count == 0:
            raise ArchiveError("the archive holds no files")
    else:
        with open(path, "rb") as f:
            total = _price(probe(f), prices)
    return max(total, prices.minimum_per_job)


def cost_of_members(paths: list[Path], prices: Prices | None = None) -> int:
    """What these files of an archive (extracted) account for of the job's cost, at least the job minimum:
    the credits a job cancelled after processing them keeps."""
    prices = prices or Prices()
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += _member_price(f, prices)
    return max(total, prices.minimum_per_job)


def _member_price(stream: IO[bytes], prices: Prices) -> int:
    try:
        price = _price(probe(stream), prices)
    except MediaError:
        price = prices.per_image  # its task will fail on its own; see the module doc
    return price + prices.per_archive_file


def probe(stream: IO[bytes]) -> tuple[Literal["image", "video"], float]:
    """("image", 0) or ("video", duration in seconds) for a seekable stream; MediaError otherwise."""
    from PIL import Image, UnidentifiedImageError
    from pillow_heif import register_heif_opener

    register_heif_opener()
    try:
        with Image.open(stream):
            return "image", 0.0
    except UnidentifiedImageError:
        pass
    except Image.DecompressionBombError as exc:
        raise MediaError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"unreadable image: {exc}") from None
    stream.seek(0)
    return "video", _video_seconds(stream)


def _video_seconds(stream: IO[bytes]) -> float:
    import av

    try:
        with av.open(stream, mode="r") as container:
            if not container.streams.video:
                raise MediaError("not an image or a video (no video stream found)")
            if container.duration:
                return container.duration / av.time_base
            video = container.streams.video[0]
            if video.duration and video.time_base:
                return float(video.duration * video.time_base)
            end = 0.0  # no duration in the headers: read the packets (no decoding)
            for packet in container.demux(video):
                if packet.pts is not None and packet.time_base:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if end <= 0:
                raise MediaError("video has no frames")
            return end
    except MediaError:
        raise
    except Exception as exc:  # av.error.FFmpegError and friends: not a media file we can read
        raise MediaError(f"not an image or a video we can read ({type(exc).__name__}: {exc})") from None


def _price(kind_and_seconds: tuple[str, float], prices: Prices) -> int:
    kind, seconds = kind_and_seconds
    if kind == "image":
        return prices.per_image
    minutes = max(1, math.ceil(round(seconds, 3) / 60))
    return minutes * prices.per_video_minute
