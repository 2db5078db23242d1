"""The per-file report a person can act on: what was found and drawn, and where a reviewer should look first.

`summarize(report, frames, config, edits)` takes the engine's `Report` of an anonymize or render run and the
document's frames (`veil.engine.document.iter_frames`, or None when there is no document):

    {"media": "video", "frames": 377, "edits": 2,
     "faces":  {"regions": 120, "frames": 60, "tracks": 2, "longest_bridge": 6,
                "below_threshold": {"candidates": 14, "frames": 9, "from": 0.3}},
     "plates": {...},
     "notes": ["broken timestamps (...): detection was scheduled by frame counts, ..."]}

`regions` are the boxes drawn (over all frames), `frames` the frames with at least one, `tracks` the distinct
tracks, `longest_bridge` the longest run of frames a track was drawn without a candidate of its own (the
tracker bridged or led it), `below_threshold` the candidates that scored just under the threshold (within
the tracker's low-score margin): the first place to look for a missed face or plate. `notes` (only when there
are any) are the engine's `Report.notes`: what the user should know about how the file was processed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .anonymize import Progress, anonymize
from .config import MediaLimits, ModelConfig
from .detections import FACE, KIND_NAMES, PLATE, Detections
from .document import Frame, iter_frames
from .render import IMAGE_FLOOR
from .report import Report
from .tracking import iou_matrix
from .video_detect import LOW_SCORE_MARGIN

_OWN_IOU = 0.3  # a drawn box with a candidate this close in its frame was seen there, not bridged


def summarize(report: Report, frames: Iterable[Frame] | None, config: ModelConfig, edits: int = 0) -> dict[str, Any]:
    thresholds = {FACE: config.blur_threshold, PLATE: config.lp_threshold}
    drawn = {f.index: f.detections for f in report.frames}
    out: dict[str, Any] = {"media": report.media, "frames": len(report.frames), "edits": edits}
    kinds = {kind: _Kind(thresholds[kind]) for kind in (FACE, PLATE)}
    pairs = (
        ((index, boxes, None) for index, boxes in drawn.items())
        if frames is None
        else ((f.index, drawn.get(f.index, Detections()), f.candidates) for f in frames)
    )
    for index, boxes, candidates in pairs:
        for kind, tally in kinds.items():
            tally.add(index, boxes.kind(kind), None if candidates is None else candidates.kind(kind))
    for kind, tally in kinds.items():
        out[KIND_NAMES[kind]] = tally.figures(with_candidates=frames is not None)
    if report.notes:  # e.g. broken timestamps (detection scheduled by frame counts), a size change mid-stream
        out["notes"] = list(report.notes)
    return out


def anonymize_with_summary(
    src: Path,
    dst: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
    image_floor: float = IMAGE_FLOOR,
) -> tuple[Report, dict[str, Any]]:
    """`anonymize`, and the per-file summary of what it drew (from a throw-away detections document)."""
    with tempfile.TemporaryDirectory(prefix="veil-") as tmp:
        doc = Path(tmp) / "detections.gz"
        report = anonymize(src, dst, config, progress, limits, document=doc, image_floor=image_floor)
        return report, summarize(report, iter_frames(doc), config)


class _Kind:
    def __init__(self, threshold: float) -> None:
        self.threshold, self.low = threshold, max(0.0, threshold - LOW_SCORE_MARGIN)
        self.regions = self.frames = self.below = self.below_frames = 0
        self.tracks: set[int] = set()
        self.bridging: dict[int, int] = {}  # track -> frames bridged so far in its current run
        self.longest_bridge = 0

    def add(self, index: int, boxes: Detections, candidates: Detections | None) -> None:
        self.regions += len(boxes)
        self.frames += bool(len(boxes))
        if boxes.track_ids is not None:
            self.tracks |= {int(t) for t in boxes.track_ids if t > 0}
        if candidates is None:
            return
        under = (candidates.scores >= self.low - 1e-6) & (candidates.scores < self.threshold - 1e-6)
        self.below += int(under.sum())
        self.below_frames += bool(under.any())
        if boxes.track_ids is None:
            return
        seen = candidates[candidates.scores >= self.low - 1e-6]
        overlap = iou_matrix(boxes.xyxy.astype(np.float64), seen.xyxy.astype(np.float64))
        for n, track in enumerate(int(t) for t in boxes.track_ids):
            if track <= 0:
                continue
            if overlap.shape[1] and overlap[n].max() >= _OWN_IOU:
                self.bridging[track] = 0
            else:
                self.bridging[track] = self.bridging.get(track, 0) + 1
                self.longest_bridge = max(self.longest_bridge, self.bridging[track])

    def figures(self, with_candidates: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"regions": self.regions, "frames": self.frames, "tracks": len(self.tracks)}
        if with_candidates:
            out["longest_bridge"] = self.longest_bridge
            out["below_threshold"] = {"candidates": self.below, "frames": self.below_frames, "from": round(self.low, 3)}
        return out
