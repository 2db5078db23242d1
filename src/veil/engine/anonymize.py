"""The engine's entry point for one file: `anonymize(src, dst, config)` and `detect_file(src, config)`.

`media_kind` sniffs the content (never trusts the extension): still images go through
read -> detect -> redact -> write here; videos are handed to `veil.engine.video`. Output is
written to a temporary file beside `dst` and renamed over it, so a failure never leaves a
half-written file.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from . import image_io
from .config import ModelConfig
from .detections import Detections
from .errors import MediaError
from .redact import redact
from .report import FrameDetections, Report

Progress = Callable[[float], None]

# Signatures of the still-image formats we read, to call a file that Pillow cannot open "corrupt"
# rather than "unrecognised". HEIF brands sit in the ISO-BMFF `ftyp` box at offset 4.
_IMAGE_MAGIC = [(b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"),
                (b"MM\x00*", "TIFF")]
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def media_kind(path: Path) -> Literal["image", "video"]:
    """"image" or "video" from the file's content; MediaError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("no such file")
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    image_format = image_io.sniff_image_format(path)
    if image_format in image_io.FORMATS:
        return "image"
    if image_format is not None:
        raise MediaError(f"unsupported image format {image_format} (supported: {image_io.FORMAT_NAMES})")
    if (magic := _image_magic(path)) is not None:
        raise MediaError(f"cannot decode image, the {magic} file is corrupt or truncated")
    if _is_video(path):
        return "video"
    raise MediaError(f"not an image or a video (unrecognised content; images: {image_io.FORMAT_NAMES}; "
                     "videos: any container and codec FFmpeg decodes)")


def anonymize(src: Path, dst: Path, config: ModelConfig, progress: Progress | None = None) -> Report:
    """Write an anonymized copy of `src` to `dst` (same format) and report what was redacted."""
    src, dst = Path(src), Path(dst)
    if media_kind(src) == "video":
        from .video import anonymize_video

        return anonymize_video(src, dst, config, progress)
    started = time.perf_counter()
    image = image_io.read_image(src)
    _tell(progress, 0.1)
    detections = _detect(image, config)
    _tell(progress, 0.8)
    redacted = redact(image.rgb.copy(), detections, config)
    with atomic_output(dst) as tmp:
        image_io.write_image(tmp, image, redacted)
    _tell(progress, 1.0)
    return _image_report(image, detections, started)


def detect_file(src: Path, config: ModelConfig, progress: Progress | None = None) -> Report:
    """Detections for `src` (image or video) after the same thresholds and merging `anonymize` uses."""
    src = Path(src)
    if media_kind(src) == "video":
        from .video import detect_video

        return detect_video(src, config, progress)
    started = time.perf_counter()
    image = image_io.read_image(src)
    _tell(progress, 0.1)
    detections = _detect(image, config)
    _tell(progress, 1.0)
    return _image_report(image, detections, started)


@contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; rename it over `dst` on success, delete it on failure."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- helpers
def _detect(image: image_io.ImageFile, config: ModelConfig) -> Detections:
    if not (config.wants_faces or config.wants_plates):
        return Detections.empty()
    from .detect import get_detector  # one shared Detector per config: models load once per process

    return get_detector(config).detect(image.rgb)


def _image_report(image: image_io.ImageFile, detections: Detections, started: float) -> Report:
    figures: dict[str, object] = {"format": image.format, "seconds": round(time.perf_counter() - started, 3)}
    if image.jpeg_quality is not None:
        figures["jpeg_quality"] = image.jpeg_quality
    return Report("image", image.width, image.height, [FrameDetections(0, None, detections)], figures)


def _tell(progress: Progress | None, fraction: float) -> None:
    if progress is not None:
        progress(fraction)


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
    """True if FFmpeg (PyAV) opens `path` as a container with a video stream (not a still-image pipe)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            name = container.format.name or ""
            if name == "image2" or name.endswith("_pipe"):
                return False
            return any(stream.type == "video" and not stream.disposition & av.stream.Disposition.attached_pic
                       for stream in container.streams)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return False
