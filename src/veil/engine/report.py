"""`Report`: what `engine.anonymize` / `engine.detect_file` return for one file.

It lists every detection (per frame for videos) and per-file figures, and renders the JSON format
that `veil detect --json` writes and evaluation tools read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .detections import FACE, PLATE, Detections


@dataclass
class FrameDetections:
    index: int
    pts: float | None  # seconds; None for still images
    detections: Detections


@dataclass
class Report:
    media: str  # "image" or "video"
    width: int
    height: int
    frames: list[FrameDetections] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # e.g. frame_count, fps, seconds, audio
    notes: list[str] = field(default_factory=list)  # things the user should know (re-encoded audio, ...)

    @property
    def detection_count(self) -> int:
        return sum(len(f.detections) for f in self.frames)

    def to_json(self, file: str) -> dict[str, Any]:
        """One `items[]` entry of `veil detect --json` output."""
        item: dict[str, Any] = {"file": file, "width": self.width, "height": self.height}
        if self.notes:  # what the user should know about this file (broken timestamps, a size change)
            item["notes"] = list(self.notes)
        if self.media == "image":
            dets = self.frames[0].detections if self.frames else Detections()
            item["faces"] = dets.rows(FACE)
            item["plates"] = dets.rows(PLATE)
            return item
        item["frames"] = []
        for frame in self.frames:
            entry: dict[str, Any] = {
                "index": frame.index,
                "pts": frame.pts,
                "faces": frame.detections.rows(FACE),
                "plates": frame.detections.rows(PLATE),
            }
            tracks, kinds = frame.detections.track_ids, frame.detections.kinds
            if tracks is not None:
                entry["face_tracks"] = [int(t) for t in tracks[kinds == FACE]]
                entry["plate_tracks"] = [int(t) for t in tracks[kinds == PLATE]]
            item["frames"].append(entry)
        item.update({k: v for k, v in self.figures.items() if isinstance(v, (int, float, str))})
        return item
