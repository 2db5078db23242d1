"""Detect once, render many: documents of every candidate (`veil.engine.document`) and outputs drawn from them.

`detect_document(src, doc, config)` runs the detectors and writes the document; `render(src, doc, dst, config,
edits)` writes the anonymized output from a document, a `model_config` and reviewer edits without loading a
detector (a decode, the redaction and an encode). `veil.engine.anonymize` takes the same path in one pass, so
the same file and config give byte-identical images and frame-identical videos either way.

What a render may change: the thresholds (down to the document's floor; for a video, the detector ran at
the threshold minus the tracker's low-score margin), `mask_blur`, `style`, `video_crf`, and it may turn a kind
off. What was detected, and how (kinds, slicing, tracking), comes from the document.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import image_io
from .config import MediaLimits, ModelConfig
from .detections import FACE, KIND_NAMES, PLATE, Detections
from .document import (
    DocumentWriter,
    Edit,
    Frame,
    Header,
    Review,
    iter_frames,
    normalized,
    read_arrays,
    read_edits,
    read_header,
)
from .errors import MediaError
from .probe import media_kind
from .redact import redact
from .report import FrameDetections, Report
from .review_copy import ReviewCopyWriter
from .tracking import Tracker, TrackingParams
from .video import detect_video, render_video
from .video_detect import LOW_SCORE_MARGIN
from .video_writer import discard

Progress = Callable[[float], None]
IMAGE_FLOOR = 0.1  # photos: candidates kept down to this calibrated score (98.5 % of crowd faces, DESIGN.md)


def render_config(header: Header, overrides: dict | None = None) -> ModelConfig:
    """The document's config with `overrides` (a model_config dict); ValueError naming what a render cannot do."""
    overrides = dict(overrides or {})
    for key in ("slicing", "face_track", "lp_track"):
        if key in overrides and overrides[key] != header.config.get(key):
            raise ValueError(f"{key} decides what is detected; it cannot change in a render (detect again)")
    for key, what in (("blur_face", "faces"), ("enable_lp", "plates")):
        if overrides.get(key) and not header.config.get(key):
            raise ValueError(f"{key}: the document holds no {what} (detect again with {key} on)")
    config = ModelConfig(**{**header.config, **overrides})
    for kind, key in ((FACE, "blur_threshold"), (PLATE, "lp_threshold")):
        lowest = _floor(header, kind) + (LOW_SCORE_MARGIN if header.media == "video" else 0.0)
        if getattr(config, key) < lowest - 1e-6 and getattr(config, "blur_face" if kind == FACE else "enable_lp"):
            raise ValueError(
                f"{key}: the document keeps candidates for a threshold of {lowest:.2f} or more "
                f"(detect again for a lower one)"
            )
    return config


def detect_document(
    src: Path,
    doc: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
    image_floor: float = IMAGE_FLOOR,
    review_copy: ReviewCopyWriter | None = None,
) -> Report:
    """Run the detectors on `src` and write its detections document to `doc` (replaced only when complete);
    a video's review copy too, where `review_copy` is given (the caller finishes or aborts it)."""
    src, doc = Path(src), Path(doc)
    if media_kind(src) == "video":
        copy = review_copy.add if review_copy is not None else None
        with atomic_output(doc) as tmp, VideoDocument(tmp, config) as recorder:
            return detect_video(src, config, progress, limits, record=recorder, copy=copy)
    image = image_io.read_image(src, limits.max_image_pixels)
    candidates = normalized(image_candidates(image.rgb, config, image_floor))
    with atomic_output(doc) as tmp:
        write_image_document(tmp, image, config, candidates, image_floor)
    return image_report(image, select(candidates, config, Review.of([])))


def render(
    src: Path,
    doc: Path,
    dst: Path,
    config: dict | ModelConfig | None = None,
    edits: list[Edit] | None = None,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
) -> Report:
    """Write `dst` from `src` and its document `doc`: the document's candidates at `config`'s thresholds, its
    edits and `edits`, drawn with `config`'s mask and style. No detector is loaded."""
    src, doc, dst = Path(src), Path(doc), Path(dst)
    header = read_header(doc)
    overrides = config.model_dump() if isinstance(config, ModelConfig) else config
    config = render_config(header, overrides)
    all_edits = read_edits(doc) + list(edits or [])
    if header.media == "video":
        tracks = track_candidates(doc) if any(e.op == "remove_track" for e in all_edits) else None
        review = Review.of(all_edits, tracks)
        frames = iter_frames(doc)
        try:
            return render_video(
                src, dst, config, document_candidates(header, frames, config, review), review.boxes, progress, limits
            )
        finally:
            frames.close()
    image = image_io.read_image(src, limits.max_image_pixels)
    if (image.width, image.height) != (header.width, header.height):
        raise MediaError(
            f"{src.name}: {image.width}x{image.height}, the document is of a {header.width}x{header.height} image"
        )
    frame = next(iter_frames(doc))
    detections = select(frame.candidates, config, Review.of(all_edits), frame)
    redacted = redact(image.rgb.copy(), detections, config)
    with atomic_output(dst) as tmp:
        image_io.write_image(tmp, image, redacted)
    return image_report(image, detections)


# ----------------------------------------------------------------------------- images
def image_candidates(rgb: np.ndarray, config: ModelConfig, floor: float = IMAGE_FLOOR) -> Detections:
    """Every candidate of the kinds `config` wants, down to `floor` (or its thresholds, if lower)."""
    if not (config.wants_faces or config.wants_plates):
        return Detections.empty()
    from .detect import get_detector  # one shared Detector per config: models load once per process

    low = config.model_copy(
        update={"blur_threshold": min(floor, config.blur_threshold), "lp_threshold": min(floor, config.lp_threshold)}
    )
    return get_detector(low).detect(rgb)


def select(candidates: Detections, config: ModelConfig, review: Review, frame: Frame | None = None) -> Detections:
    """An image's boxes to redact: candidates at `config`'s thresholds after the review's edits, plus its boxes."""
    if frame is not None:
        candidates = review.candidates(frame)
    thresholds = {
        kind: threshold
        for kind, wanted, threshold in (
            (FACE, config.wants_faces, config.blur_threshold),
            (PLATE, config.wants_plates, config.lp_threshold),
        )
        if wanted
    }
    return Detections.concat([candidates[_at_least(candidates, thresholds)], _without_tracks(review.boxes(0))])


def write_image_document(
    path: Path, image: image_io.ImageFile, config: ModelConfig, candidates: Detections, floor: float
) -> None:
    header = Header("image", image.width, image.height, _floors(config, floor, floor), config.model_dump())
    with DocumentWriter(path, header) as writer:
        writer.frame(0, None, candidates)


# ----------------------------------------------------------------------------- videos
class VideoDocument:
    """The video pipeline's recorder (`veil.engine.video.Recorder`): writes the document's header once the
    detectors' schedule is known, then every frame's candidates."""

    def __init__(self, path: Path, config: ModelConfig) -> None:
        self.path, self.config = path, config
        self._writer: DocumentWriter | None = None

    def start(self, source, plan) -> None:
        planner = plan[0]
        floors = _floors(
            self.config, self.config.blur_threshold - LOW_SCORE_MARGIN, self.config.lp_threshold - LOW_SCORE_MARGIN
        )
        video = {
            "fps": source.fps,
            "stride": planner.stride if planner else 1,
            "scan": planner.scan_interval if planner else 1,
        }
        self._writer = DocumentWriter(
            self.path, Header("video", source.width, source.height, floors, self.config.model_dump(), video)
        )

    def frame(self, index: int, pts: float | None, candidates: Detections | None) -> None:
        assert self._writer is not None, "the pipeline calls start() before frame()"
        self._writer.frame(index, pts, candidates)

    def __enter__(self) -> VideoDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


def document_candidates(header: Header, frames: Iterator[Frame], config: ModelConfig, review: Review):
    """The `plan` of a render: a planner that hands the tracker each frame's reviewed candidates (those a
    detector at `config`'s thresholds would have given it), in step with the decoder."""
    tracked = {k for k, on in ((FACE, header.config.get("face_track")), (PLATE, header.config.get("lp_track"))) if on}
    low = {
        kind: threshold - LOW_SCORE_MARGIN
        for kind, on, threshold in (
            (FACE, config.wants_faces, config.blur_threshold),
            (PLATE, config.wants_plates, config.lp_threshold),
        )
        if on
    }

    video = _video_header(header)

    class _Planner:
        stride, scan_interval = video["stride"], video["scan"]
        width, height = header.width, header.height

        def __call__(self, index: int, frame, predict) -> Detections | None:
            doc = next(frames, None)
            if doc is None or doc.index != index:
                raise MediaError(f"the detections document does not match this video (frame {index})")
            if not doc.ran:
                return None
            dets = review.candidates(doc)
            return dets[_at_least(dets, low)]

    def plan(source):
        planner = _Planner()
        return planner, TrackingParams.for_rate(source.fps, planner.stride, planner.scan_interval), tracked

    return plan


def track_candidates(doc: Path) -> dict[int, set[str]]:
    """{track id: its candidates' ids} as a render at the document's own config tracks them (no decoding):
    from the tracks a version 2 document holds (written by the same tracker), else by running the tracker."""
    arrays = read_arrays(doc)
    if arrays.header.version < 2:
        return run_tracker(doc)
    frame, n = arrays.positions()
    found: dict[int, set[str]] = {}
    for i in np.flatnonzero(arrays.tracks):
        found.setdefault(int(arrays.tracks[i]), set()).add(f"{frame[i]}.{n[i]}")
    return found


def run_tracker(doc: Path) -> dict[int, set[str]]:
    """`track_candidates` by running the tracker over the document's candidates (a version 1 document; minutes
    for an hour of video)."""
    header = read_header(doc)
    config = ModelConfig(**header.config)
    tracked = [k for k, on in ((FACE, config.face_track), (PLATE, config.lp_track)) if on]
    video = _video_header(header)
    tracker = Tracker(
        TrackingParams.for_rate(float(video.get("fps") or 30.0), video["stride"], video["scan"]),
        {FACE: config.blur_threshold, PLATE: config.lp_threshold},
    )
    low = {FACE: config.blur_threshold - LOW_SCORE_MARGIN, PLATE: config.lp_threshold - LOW_SCORE_MARGIN}
    ids: dict[tuple, str] = {}
    tracks = []
    for frame in iter_frames(doc):
        dets = frame.candidates
        if not frame.ran or not len(dets):
            continue
        keep = _at_least(dets, low)
        for n in np.flatnonzero(keep):
            ids[(frame.index, *np.asarray(dets.xyxy[n], np.float64).round(2))] = f"{frame.index}.{n}"
        dets = dets[keep]
        tracks += tracker.update(frame.index, dets[np.isin(dets.kinds, tracked)])
    return {
        track.id: {ids[(i, *np.asarray(box).round(2))] for i, box in zip(track.frames, track.boxes)} for track in tracks
    }


# ----------------------------------------------------------------------------- helpers
def _at_least(dets: Detections, thresholds: dict[int, float]) -> np.ndarray:
    """Which candidates are of a kind in `thresholds` and score at least its threshold (never below 0)."""
    keep = np.zeros(len(dets), bool)
    for kind, threshold in thresholds.items():
        keep |= (dets.kinds == kind) & (dets.scores >= max(0.0, threshold) - 1e-6)
    return keep


def _floors(config: ModelConfig, faces: float, plates: float) -> dict[str, float]:
    return {
        KIND_NAMES[FACE]: round(max(0.0, min(faces, config.blur_threshold)), 4),
        KIND_NAMES[PLATE]: round(max(0.0, min(plates, config.lp_threshold)), 4),
    }


def _video_header(header: Header) -> dict[str, Any]:
    """A video document's schedule (fps, stride, scan): `VideoDocument.start` writes it in every one."""
    if header.video is None:
        raise MediaError("the detections document has no video schedule (not a video's document?)")
    return header.video


def _floor(header: Header, kind: int) -> float:
    return float(header.floor[KIND_NAMES[kind]])


def _without_tracks(dets: Detections) -> Detections:
    return Detections(dets.xyxy, dets.scores, dets.kinds, landmarks=dets.landmarks)


def image_report(image: image_io.ImageFile, detections: Detections, seconds: float | None = None) -> Report:
    figures: dict[str, object] = {"format": image.format}
    if seconds is not None:
        figures["seconds"] = round(seconds, 3)
    if image.jpeg_quality is not None:
        figures["jpeg_quality"] = image.jpeg_quality
    return Report("image", image.width, image.height, [FrameDetections(0, None, detections)], figures)


@contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; rename it over `dst` on success, delete it on failure."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        discard(tmp)
