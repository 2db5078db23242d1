"""Pricing: what a job costs in credits, known as soon as its upload is committed.

Default price list (each value is a `VEIL_PRICE_*` setting, see `veil.settings`):

| what | credits |
|---|---|
| an image (JPEG, PNG, WebP, BMP, TIFF, HEIC, ...) | 1 (`per_image`) |
| a video, per *started* minute (0:59 → 1 minute, 1:00.5 → 2) | 5 (`per_video_minute`) |
| ... a minute covers at most this many frames a second (faster video: frames / this rate) | 60 (`video_fps`) |
| each file inside an archive, on top of its own image/video price | 0 (`per_archive_file`) |
| the least any job costs | 1 (`minimum_per_job`) |

A video's minutes are those it will take to process: the longer of its header's duration and the span
of its frames' timestamps (a header may lie), and at least its frame count over `video_fps` (a file of
10,000 frames crammed into one second is priced as the 167 s those frames are at 60 fps). The worker
decodes no more frames than were priced (`MediaLimits.max_video_frames`).

An archive costs the sum of its files. Whether a file can be processed is decided by
`veil.engine.probe` from its content, exactly as the engine will decide it (an image is decoded,
a video's first frame too, pictures over the size limits are refused): a top-level file the engine
cannot process raises `MediaError`, so the job fails at pricing and costs nothing. A file inside an
archive that the engine cannot process costs nothing either (its task will fail alone, with the same
reason); an archive with no file the engine can process is refused. A refused archive raises
`ArchiveError`. Both name the problem.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from ..engine.config import MediaLimits
from ..engine.errors import MediaError
from ..engine.probe import MediaInfo, probe
from .archive import ArchiveError, ArchiveLimits, is_archive, iter_member_files

__all__ = ["ArchiveError", "MediaError", "Prices", "cost_of", "cost_of_members"]


class Prices(BaseModel):
    """The price list, in credits."""

    per_image: int = Field(1, ge=0, description="Credits per image.")
    per_video_minute: int = Field(5, ge=0, description="Credits per started minute of video.")
    per_archive_file: int = Field(0, ge=0, description="Extra credits per file inside an archive.")
    minimum_per_job: int = Field(1, ge=0, description="The least a job costs.")
    video_fps: int = Field(
        60,
        ge=1,
        description="Frames a second one video minute covers; a video with more "
        "frames than that over its length is priced by its frame count at this rate.",
    )

    @classmethod
    def from_settings(cls, settings) -> Prices:
        """Built from `veil.settings`' VEIL_PRICE_* values."""
        return cls(
            per_image=settings.price_per_image,
            per_video_minute=settings.price_per_video_minute,
            per_archive_file=settings.price_per_archive_file,
            minimum_per_job=settings.price_minimum_per_job,
            video_fps=settings.price_video_fps,
        )


def cost_of(
    path: Path, prices: Prices | None = None, limits: ArchiveLimits | None = None, media: MediaLimits = MediaLimits()
) -> int:
    """Credits the job whose input is `path` costs (an image, a video or an archive of them).

    Archives are read member by member (never extracted as a tree) with every check of
    `expand_archive`, so a refused archive raises `ArchiveError` here, before approval.
    """
    prices = prices or Prices()
    if not is_archive(path):
        return max(_price(probe(path, media), prices), prices.minimum_per_job)
    total = count = usable = 0
    first_problem = ""
    for name, file in iter_member_files(path, limits, work_dir=path.parent):
        count += 1
        try:
            total += _member_price(file, prices, media)
            usable += 1
        except MediaError as exc:  # its task will fail alone, free of charge
            first_problem = first_problem or f"{name!r}: {str(exc).replace(file.name, name)}"
    if count == 0:
        raise ArchiveError("the archive holds no files")
    if usable == 0:
        raise ArchiveError(f"no file in the archive is an image or a video Veil can process ({first_problem})")
    return max(total, prices.minimum_per_job)


def cost_of_members(paths: list[Path], prices: Prices | None = None, media: MediaLimits = MediaLimits()) -> int:
    """What these files of an archive (extracted) account for of the job's cost, at least the job minimum:
    the credits a job cancelled after processing them keeps."""
    prices = prices or Prices()
    total = 0
    for path in paths:
        try:
            total += _member_price(path, prices, media)
        except MediaError:
            pass  # priced at nothing, as cost_of did
    return max(total, prices.minimum_per_job)


def _member_price(path: Path, prices: Prices, media: MediaLimits) -> int:
    """A file of an archive: its own price plus `per_archive_file`; MediaError when the engine cannot process it."""
    return _price(probe(path, media), prices) + prices.per_archive_file


def _price(info: MediaInfo, prices: Prices) -> int:
    if info.kind == "image":
        return prices.per_image
    seconds = max(info.seconds, info.frames / prices.video_fps)
    minutes = max(1, math.ceil(round(seconds, 3) / 60))
    return minutes * prices.per_video_minute
