"""The engine's entry point for one file: `anonymize(src, dst, config)` and `detect_file(src, config)`.

`media_kind` (in `veil.engine.probe`) sniffs the content, never the extension: still images go through
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

from . import image_io
from .config import MediaLimits, ModelConfig
from .detections import Detections
from .probe import media_kind
from .redact import redact
from .report import FrameDetections, Report

Progress = Callable[[float], None]

def anonymize(src: Path, dst: Path, config: ModelConfig, progress: Progress | None = None,
              limits: MediaLimits = MediaLimits()) -> Report:
    """Write an anonymized copy of `src` to `dst` (same format) and report what was redacted."""
    src, dst = Path(src), Path(dst)
    if media_kind(src) == "video":
        from .video import anonymize_video

        return anonymize_video(src, dst, config, progress, limits)
    started = time.perf_counter()
    image = image_io.read_image(src, limits.max_image_pixels)
    _tell(progress, 0.1)
    detections = _detect(image, config)
    _tell(progress, 0.8)
    redacted = redact(image.rgb.copy(), detections, config)
    with atomic_output(dst) as tmp:
        image_io.write_image(tmp, image, redacted)
    _tell(progress, 1.0)
    return _image_report(image, detections, started)


def detect_file(src: Path, config: ModelConfig, progress: Progress | None = None,
                limits: MediaLimits = MediaLimits()) -> Report:
    """Detections for `src` (image or video) after the same thresholds and merging `anonymize` uses."""
    src = Path(src)
    if media_kind(src) == "video":
        from .video import detect_video

        return detect_video(src, config, progress, limits)
    started = time.perf_counter()
    image = image_io.read_image(src, limits.max_image_pixels)
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
