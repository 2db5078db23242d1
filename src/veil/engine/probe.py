"""What an input is and whether the engine can process it, decided from its content without processing it.

`media_kind` sniffs the content (never the extension): "image" when Pillow recognises a supported
format, "video" when FFmpeg opens it as a real container with a video stream (FFmpeg's `image2`
demuxer, which would read any file named `.jpg` as a one-frame video, does not count).

`probe` goes further, so that what the engine would refuse is refused before anything is charged:
an image is decoded (a JPEG at 1/8 scale: every byte is still read, so a truncated file shows), a
video's first frame is decoded and its duration read; pictures over `MediaLimits` are refused from
their header. GIF and animated WebP are refused with a clear message (convert animations to MP4):
their output would have to be a video, which is not what the client asked for. An archive (zip, tar,
7z, rar, a compressed stream) is never read as media, even where FFmpeg would (a stored zip of JPEGs
reads as an MJPEG video): its files are taken out first (`veil.jobs.archive`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import image_io
from .config import MediaLimits
from .errors import MediaError, NotMedia
from .video_source import av_reason, open_source


@dataclass(frozen=True)
class MediaInfo:
    kind: Literal["image", "video"]
    width: int
    height: int
    seconds: float  # 0 for an image; a video: the longer of its header's duration and its packets' span
    frames: int = 0  # a video's frames (packets of its video stream); 0 for an image


def probe(path: Path, limits: MediaLimits = MediaLimits()) -> MediaInfo:
    """The input's kind, size and duration once it is known the engine can read it; MediaError otherwise."""
    path = Path(path)
    if media_kind(path) == "image":
        width, height = image_io.check_image(path, limits.max_image_pixels)
        return MediaInfo("image", width, height, 0.0)
    return _probe_video(path, limits)


def _probe_video(path: Path, limits: MediaLimits) -> MediaInfo:
    import av

    source = open_source(path, limits)
    try:
        first = next(source.container.decode(source.video), None)
        if first is None:
            raise MediaError(f"{path.name}: no video frame could be decoded (corrupt or truncated file)")
        width, height, header = source.width, source.height, source.duration or 0.0
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path.name}: corrupt or truncated video ({av_reason(exc)})") from None
    finally:
        source.container.close()
    frames, span = _packet_extent(path, limits)
    return MediaInfo("video", width, height, max(header, span), frames)


def _packet_extent(path: Path, limits: MediaLimits) -> tuple[int, float]:
    """The video stream's packet count and the seconds its timestamps span (first start to last end),
    read by demuxing from the start, without decoding."""
    import av

    source = open_source(path, limits)
    frames, first, last = 0, None, None
    try:
        time_base = source.video.time_base
        for packet in source.container.demux(source.video):
            if not packet.size:
                continue
            frames += 1
            if packet.pts is not None and time_base:
                first = packet.pts if first is None else min(first, packet.pts)
                end = packet.pts + (packet.duration or 0)
                last = end if last is None else max(last, end)
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path.name}: corrupt or truncated video ({av_reason(exc)})") from None
    finally:
        source.container.close()
    # first and last are set only with a time base
    span = float((last - first) * time_base) if first is not None and last is not None and time_base else 0.0
    return frames, span


# Signatures of the still-image formats we read, to call a file that Pillow cannot open "corrupt"
# rather than "unrecognised". HEIF brands sit in the ISO-BMFF `ftyp` box at offset 4.
_IMAGE_MAGIC = [(b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


# Magic numbers of the container/compression formats that hold files (content, never the file name).
_ARCHIVE_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),  # empty zip
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07\x01\x00", "rar5"),
    (0, b"Rar!\x1a\x07\x00", "rar"),
    (257, b"ustar", "tar"),
]
ARCHIVE_SNIFF_BYTES = 512


def archive_format(head: bytes) -> str | None:
    """The archive/compression format these leading bytes belong to ("rar5" is RAR 5), or None."""
    for offset, magic, name in _ARCHIVE_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def media_kind(path: Path) -> Literal["image", "video"]:
    """ "image" or "video" from the file's content; MediaError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("no such file")
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    image_format = image_io.sniff_image_format(path)
    if image_format in image_io.FORMATS:
        return "image"
    if image_format is not None:
        raise MediaError(
            f"unsupported image format {image_format} (supported: {image_io.FORMAT_NAMES}"
            + ("; convert an animation to MP4)" if image_format == "GIF" else ")")
        )
    if (magic := _image_magic(path)) is not None:
        raise MediaError(f"cannot decode image, the {magic} file is corrupt or truncated")
    with open(path, "rb") as f:
        packed = archive_format(f.read(ARCHIVE_SNIFF_BYTES))
    if packed is not None:
        what = f"{packed}-compressed file" if packed in ("gzip", "bzip2", "xz") else f"{packed.rstrip('5')} archive"
        raise MediaError(
            f"a {what}, not an image or a video (an archive's files are processed one by one, "
            "never the archive itself as media)"
        )
    if _is_video(path):
        return "video"
    raise NotMedia(
        f"not an image or a video (unrecognised content; images: {image_io.FORMAT_NAMES}; "
        "videos: any container and codec FFmpeg decodes)"
    )


def _image_magic(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, name in _IMAGE_MAGIC:
        if head.startswith(magic):
            return name
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":  # BMP: magic, file size, reserved zeros
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIC"
    return None


def _is_video(path: Path) -> bool:
    """True if FFmpeg (PyAV) opens `path` as a container with a video stream (not a still-image pipe, not text)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            name = container.format.name or ""
            if name in ("image2", "tty") or name.endswith("_pipe"):  # tty: any text file, as ANSI art
                return False
            return any(
                stream.type == "video" and not stream.disposition & av.stream.Disposition.attached_pic
                for stream in container.streams
            )
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return False
