"""The engine's entry point for one file: `anonymize(src, dst, config)` and `detect_file(src, config)`.

`media_kind` (in `veil.engine.probe`) sniffs the content, never the extension: still images go through
read -> candidates -> select at the thresholds -> redact -> write here, the same steps as a render from a
detections document (`veil.engine.render`), so the two give the same output; videos are handed to
`veil.engine.video`. Output is written to a temporary file beside `dst` and renamed over it, so a failure
never leaves a half-written file; so is the document, when one is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from . import image_io
from .config import MediaLimits, ModelConfig
from .document import Review, normalized
from .probe import media_kind
from .redact import redact
from .render import (
    IMAGE_FLOOR,
    VideoDocument,
    atomic_output,
    image_candidates,
    image_report,
    select,
    write_image_document,
)
from .report import Report

Progress = Callable[[float], None]


def anonymize(
    src: Path,
    dst: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
    document: Path | None = None,
    image_floor: float = IMAGE_FLOOR,
) -> Report:
    """Write an anonymized copy of `src` to `dst` (same format) and report what was redacted; with `document`,
    also the detections document a later `render` can draw from (`veil.engine.render`)."""
    src, dst = Path(src), Path(dst)
    if media_kind(src) == "video":
        from .video import anonymize_video

        if document is None:
            return anonymize_video(src, dst, config, progress, limits)
        with atomic_output(Path(document)) as tmp, VideoDocument(tmp, config) as recorder:
            return anonymize_video(src, dst, config, progress, limits, record=recorder)
    started = time.perf_counter()
    image = image_io.read_image(src, limits.max_image_pixels)
    _tell(progress, 0.1)
    candidates = normalized(image_candidates(image.rgb, config, image_floor))
    detections = select(candidates, config, Review.of([]))
    _tell(progress, 0.8)
    redacted = redact(image.rgb.copy(), detections, config)
    with atomic_output(dst) as tmp:
        image_io.write_image(tmp, image, redacted)
    if document is not None:
        with atomic_output(Path(document)) as tmp:
            write_image_document(tmp, image, config, candidates, image_floor)
    _tell(progress, 1.0)
    return image_report(image, detections, time.perf_counter() - started)


def detect_file(
    src: Path, config: ModelConfig, progress: Progress | None = None, limits: MediaLimits = MediaLimits()
) -> Report:
    """Detections for `src` (image or video) after the same thresholds and merging `anonymize` uses."""
    src = Path(src)
    if media_kind(src) == "video":
        from .video import detect_video

        return detect_video(src, config, progress, limits)
    started = time.perf_counter()
    image = image_io.read_image(src, limits.max_image_pixels)
    _tell(progress, 0.1)
    detections = select(normalized(image_candidates(image.rgb, config)), config, Review.of([]))
    _tell(progress, 1.0)
    return image_report(image, detections, time.perf_counter() - started)


# ----------------------------------------------------------------------------- helpers
def _tell(progress: Progress | None, fraction: float) -> None:
    if progress is not None:
        progress(fraction)
