"""`Detections`: the one box currency of the engine.

Every detector returns it, slicing merges it, the tracker annotates it, redaction consumes it and
the JSON report is written from it. Boxes are x1, y1, x2, y2 in pixels of the *original* image
(after EXIF orientation for photos), scores are on Veil's calibrated 0..1 scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FACE = 0
PLATE = 1
KIND_NAMES = {FACE: "faces", PLATE: "plates"}
# Face landmarks are used only where the eye-centre-to-mouth-centre distance d lies in this range of the
# face box's height (a wild decode must not move a box or blur half the frame).
LANDMARK_D_RANGE = (0.12, 0.9)


def face_axis(marks: np.ndarray, box_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For five-point face landmarks (N x 10) and their boxes' heights (N): eye centre and mouth centre
    (N x 2, float64), their distance d (N) and whether the landmarks are usable (all finite, d within
    LANDMARK_D_RANGE of the box height)."""
    pts = np.asarray(marks, np.float64).reshape(-1, 5, 2)
    eyes, mouth = pts[:, :2].mean(axis=1), pts[:, 3:].mean(axis=1)
    d = np.linalg.norm(mouth - eyes, axis=1)
    h = np.asarray(box_h, np.float64).reshape(-1)
    ok = np.isfinite(pts).all(axis=(1, 2)) & (d >= LANDMARK_D_RANGE[0] * h) & (d <= LANDMARK_D_RANGE[1] * h)
    return eyes, mouth, d, ok


@dataclass
class Detections:
    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    kinds: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int8))
    track_ids: np.ndarray | None = None  # int64, -1 where untracked; None before tracking
    # float32 Nx10 face landmarks (x, y of eyes, nose tip, mouth corners; NaN where unknown), or None.
    # Redaction shapes the face mask from them; boxes rebuilt elsewhere (tracking) simply drop them.
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.kinds = np.asarray(self.kinds, np.int8).reshape(-1)
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, np.int64).reshape(-1)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, np.float32).reshape(-1, 10)
        n = len(self.xyxy)
        if (
            len(self.scores) != n
            or len(self.kinds) != n
            or any(a is not None and len(a) != n for a in (self.track_ids, self.landmarks))
        ):
            raise ValueError("Detections arrays must have the same length")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        return cls()

    @classmethod
    def of_kind(cls, xyxy, scores, kind: int, landmarks=None) -> Detections:
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        return cls(xyxy, scores, np.full(len(xyxy), kind, np.int8), landmarks=landmarks)

    def __getitem__(self, index) -> Detections:
        return Detections(
            self.xyxy[index],
            self.scores[index],
            self.kinds[index],
            None if self.track_ids is None else self.track_ids[index],
            None if self.landmarks is None else self.landmarks[index],
        )

    def kind(self, kind: int) -> Detections:
        return self[self.kinds == kind]

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections()
        tracked = all(p.track_ids is not None for p in parts)
        marked = any(p.landmarks is not None for p in parts)
        return Detections(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.kinds for p in parts]),
            np.concatenate([p.track_ids for p in parts]) if tracked else None,
            np.concatenate(
                [p.landmarks if p.landmarks is not None else np.full((len(p), 10), np.nan, np.float32) for p in parts]
            )
            if marked
            else None,
        )

    def rows(self, kind: int) -> list[list[float]]:
        """`[[x1, y1, x2, y2, score], ...]` for one kind, rounded for JSON."""
        sel = self.kind(kind)
        return [[round(float(v), 2) for v in box] + [round(float(s), 4)] for box, s in zip(sel.xyxy, sel.scores)]
