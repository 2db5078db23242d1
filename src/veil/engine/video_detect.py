"""The video detect stage: which frames, and which parts of them, the detectors look at.

For a tracked kind (faces with `face_track`, plates with `lp_track`) the detector runs about
`_DETECT_FPS[kind]` times a second of video, in two ways:

* a **scan** about `_SCAN_FPS[kind]` times a second finds new objects: it looks at the parts of the
  frame that changed since the kind's last scan (motion gating; static objects keep their tracks
  through the crops below), and at the whole frame (a downscaled copy) every 1 / `_FULL_SCAN_FPS`
  seconds or when most of it changed. An object that appears between two scans is covered from
  before its first detection by the tracker's look-ahead (`lead`: two scan intervals);
* on every detector run but whole-frame scans, each live track is **re-detected in a crop** around
  its predicted box, at native
  resolution for plates (at least the scan's scale, up to 2x for small faces): it keeps the track's
  box on the object for a fraction of a full scan's cost.

With `slicing`, about `_TILE_FPS` times a second a scan adds the next of the detector's tiles in
turn (`Detector`'s ``tiles`` argument), at the tiles' resolution, instead of running all tiles on
every detector frame (several seconds of CPU per 1080p frame); a track found in a tile is then kept
by its crops. Kinds that are not tracked are scanned whole on every frame (each frame's boxes are
that frame's detections), but motion-gated too: the detector looks only where the picture changed
since it last looked there, and the boxes it found in the unchanged parts are kept (the same pixels
give the same boxes); the whole frame every 1 / `_FULL_SCAN_FPS` seconds or when most of it changed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import av
import cv2
import numpy as np

from ..settings import engine_settings
from .bounds import plausible
from .config import ModelConfig
from .detect import TilePick
from .detections import FACE, PLATE, Detections
from .yuv import FramePixels

_TUNING = engine_settings()  # read once: the detector's schedule is fixed for the process

# Detects on one image: (RGB image, kinds to look for, side=None, tiles=None) -> Detections in that
# image's pixels. `side`: the whole-image pass's longest input side (default: the image's own);
# `tiles`: picks the slicing tiles to run on top of it (default: none).
DetectFn = Callable[..., Detections]

# A full-frame scan runs on a copy whose longest side is this, per kind ...
_DETECT_SIDE = {FACE: _TUNING.video_face_side, PLATE: _TUNING.video_plate_side}
# ... and at least this fraction of the frame's longest side, so the smallest object found (in source
# pixels) does not grow with the resolution: at a fixed 640 px a 4K face would need to be twice
# as large as a 1080p one to be seen. Plates at 2/3 (1280 px for 1080p): with 8 detector runs/s,
# 91 of the 184 reference plate-frames of the 1080p bench clip leaked at 1/2, 47 at 2/3 (bench/leak_check.py).
_MIN_DETECT_FRACTION = {FACE: 1 / 3, PLATE: 2 / 3}
# Tracked kinds are detected this many times per second of video (full scans or crops); the tracker
# bridges the frames in between. Plates need more: small plates on moving cars drift out of a
# bridged box, and a plate often scores high in one frame and low in the next (leaked plate-frames
# on the 1080p bench clip, full scans only: 22 of 184 at 8 runs/s, 4 at 10, 0 at 15).
_DETECT_FPS = {FACE: _TUNING.video_detect_fps, PLATE: _TUNING.video_plate_detect_fps}
# Scans per second for tracked kinds (the rest of the detector runs are crops). Plates at 5: at 3 a
# fast plate that one scan missed was first found two scans later, and the look-ahead's box (moved
# at most one box size back from the first detection) did not reach it (1 leaked plate-frame of 10
# checked on a 221-frame cut of the 1080p bench clip; 0 at 5).
_SCAN_FPS = {FACE: _TUNING.video_face_scan_fps, PLATE: _TUNING.video_plate_scan_fps}
# Slicing tiles per second, per kind (one tile each time; see the module docstring).
_TILE_FPS = _TUNING.video_tile_fps
# Motion gating (tracked kinds): a scan looks only where the picture changed since any of that kind's
# last _GATE_MEMORY scans (16x16 block means of the luma differ by more than _GATE_DIFF levels, well
# above sensor noise; so an object that arrives and stops gets that many scans to be found) plus
# around its live tracks, which keep static objects covered; the whole frame when more than
# _GATE_MAX of it changed or the changed regions with their context cover more than _GATE_MAX of it
# (a plate in a changed region spanning 82 % of a 1080p bench clip frame scored below the threshold
# where the whole frame found it: 1 leaked plate-frame), and every 1 / _FULL_SCAN_FPS seconds
# whatever changed (objects the scans missed and that have not moved since).
_GATE_BLOCK = 16
_GATE_DIFF = 6.0
_GATE_MEMORY = 3
_GATE_MAX = 0.5
_FULL_SCAN_FPS = _TUNING.video_full_scan_fps
# A crop spans the predicted box plus this many box sizes on each side (the object moves, the
# prediction is rough), and at least _CROP_MIN source pixels; crops that overlap are joined. The plate
# detector needs context: on the parking-lot dev clip a fast plate inside a 96 px crop was not found
# (1 leaked plate-frame), inside 160-256 px crops it scored 0.5-0.7, as in the whole frame.
_CROP_PAD = {FACE: 0.5, PLATE: 1.0}
_CROP_MIN = {FACE: 96, PLATE: 192}
# Crop scale: enough to give the crop this longest side, at most this (native for plates: upscaled
# plates scored no better on the dev sets), and never less than the scan's.
_CROP_SIDE = 256
_CROP_MAX_SCALE = {FACE: 2.0, PLATE: 1.0}
# Detection thresholds are lowered by this for tracking: weaker detections may continue a track.
LOW_SCORE_MARGIN = 0.2

Predict = Callable[[int], np.ndarray]  # kind -> predicted xyxy boxes (N x 4) of its live tracks


def default_detect(config: ModelConfig) -> DetectFn:
    """H2's detector, one pass per kind at the image's own size, thresholds lowered by
    `LOW_SCORE_MARGIN` (weaker detections may continue a track; the tracker re-applies the user's);
    with a tile pick, that pick of the slicing tiles too."""
    from .detect import get_detector

    whole = get_detector(config.model_copy(update={"slicing": False}))
    sliced = get_detector(config.model_copy(update={"slicing": True}))
    face_t = max(0.0, config.blur_threshold - LOW_SCORE_MARGIN)
    plate_t = max(0.0, config.lp_threshold - LOW_SCORE_MARGIN)

    def detect(image: np.ndarray, kinds: frozenset[int], side: int | None = None, tiles: TilePick = None) -> Detections:
        side = side or max(image.shape[:2])
        detector = whole if tiles is None else sliced
        parts = []
        if FACE in kinds:
            parts.append(detector.detect_faces(image, side=side, threshold=face_t, tiles=tiles))
        if PLATE in kinds:
            parts.append(detector.detect_plates(image, side=side, threshold=plate_t, tiles=tiles))
        return Detections.concat(parts)

    return detect


def detect_side(kind: int, longest: int) -> int:
    """Longest side of the scan's detector input for a frame whose longest side is `longest` (small
    videos are upscaled to `_DETECT_SIDE`)."""
    return max(_DETECT_SIDE[kind], round(longest * _MIN_DETECT_FRACTION[kind]))


def _every(fps: float, per_second: float) -> int:
    if fps <= 0 or per_second <= 0:
        return 1
    return max(1, round(fps / per_second))


class FrameDetector:
    """Runs the detectors for one frame at a time, as the module docstring plans it."""

    def __init__(
        self,
        detect: DetectFn,
        config: ModelConfig,
        size: tuple[int, int],
        fps: float,
        kinds: frozenset[int],
        tracked: set[int],
    ) -> None:
        self.detect, self.config = detect, config
        self.width, self.height = size
        self.kinds = kinds
        self.strides = {k: _every(fps, _DETECT_FPS[k]) if k in tracked else 1 for k in kinds}
        # Scans on a multiple of the detector stride, so that a scan frame is a detector frame.
        self.scans = {
            k: self.strides[k] * max(1, round(_every(fps, _SCAN_FPS[k]) / self.strides[k])) if k in tracked else 1
            for k in kinds
        }
        # With slicing, a tile joins the scan about _TILE_FPS times a second (one tile, in turn).
        self.tile_scans = {k: self.scans[k] * max(1, round(_every(fps, _TILE_FPS) / self.scans[k])) for k in kinds}
        self._tile_turn = {k: 0 for k in kinds}
        self.tracked = tracked
        self.full_scans = {k: self.scans[k] * max(1, round(_every(fps, _FULL_SCAN_FPS) / self.scans[k])) for k in kinds}
        self._lumas: dict[int, deque[np.ndarray]] = {k: deque(maxlen=_GATE_MEMORY) for k in kinds}
        # Untracked kinds: each block's luma when the detector last looked at it, and what it found.
        self._looked: dict[int, np.ndarray] = {}
        self._held: dict[int, Detections] = {}

    @property
    def stride(self) -> int:
        """The longest gap between two detector runs of a kind (the tracker bridges it)."""
        return max(self.strides.values(), default=1)

    @property
    def scan_interval(self) -> int:
        """The longest gap between two full-frame scans (new objects wait this long at most)."""
        return max(self.scans.values(), default=1)

    def __call__(self, index: int, frame: av.VideoFrame, predict: Predict) -> Detections | None:
        """Detections of frame `index` in frame pixels, or None when no detector ran on it; boxes that
        cannot be their kind dropped (`veil.engine.bounds`)."""
        due = [k for k in self.kinds if index % self.strides[k] == 0]
        if not due:
            return None
        pixels = FramePixels(frame)
        whole, parts = set(), []
        for kind in due:
            if kind not in self.tracked:
                changed = self._untracked(kind, pixels, index)
                if changed is None:
                    whole.add(kind)
                else:
                    parts.append(changed)
                continue
            regions: list[tuple[int, int, int, int]] = []
            if index % self.scans[kind] == 0:
                moved = self._changed(kind, pixels, index)
                if moved is None:
                    whole.add(kind)
                    continue
                regions += moved
            regions += around(predict(kind), _CROP_PAD[kind], _CROP_MIN[kind], self.width, self.height)
            parts.append(self._regions(pixels, kind, join(regions)))
        if whole:
            scanned = self._scan(index, pixels, frozenset(whole))
            for kind in whole - self.tracked:
                self._held[kind] = scanned.kind(kind)
            parts.append(scanned)
        return plausible(Detections.concat(parts), self.width, self.height)

    def _untracked(self, kind: int, pixels: FramePixels, index: int) -> Detections | None:
        """This frame's detections of an untracked kind: the boxes kept from where nothing changed since
        the detector last looked, plus what it finds in the changed regions; None for a whole-frame scan."""
        luma = pixels.block_means(_GATE_BLOCK)
        looked = self._looked.get(kind)
        whole = (
            looked is None
            or index % self.full_scans[kind] == 0
            or self.config.slicing
            and index % self.tile_scans[kind] == 0
        )
        changed = None if whole or looked is None else np.abs(luma - looked) > _GATE_DIFF
        if looked is None or changed is None or changed.mean() > _GATE_MAX:
            self._looked[kind] = luma
            return None
        held = self._held[kind]
        if not changed.any():
            return held
        regions = self._change_regions(changed, kind)
        # A kept box that a region touches is looked at whole, with context, in that region.
        boxes = np.clip(held.xyxy, 0, [self.width, self.height, self.width, self.height])
        while cut := [
            self._with_context(box, kind) for box in boxes if _touches(box, regions) and not _inside(box, regions)
        ]:
            regions = join(regions + cut)
        keep = np.array([not _touches(box, regions) for box in boxes], bool)
        b = _GATE_BLOCK
        for x0, y0, x1, y1 in regions:  # the blocks looked at now remember this frame's luma
            looked[y0 // b : -(-y1 // b), x0 // b : -(-x1 // b)] = luma[y0 // b : -(-y1 // b), x0 // b : -(-x1 // b)]
        found = Detections.concat([held[keep], self._regions(pixels, kind, regions, as_scanned=True)])
        self._held[kind] = found
        return found

    def _changed(self, kind: int, pixels: FramePixels, index: int) -> list[tuple[int, int, int, int]] | None:
        """Regions where the picture changed since this kind's last scan, or None for a whole-frame scan."""
        luma = pixels.block_means(_GATE_BLOCK)
        earlier = list(self._lumas[kind])
        self._lumas[kind].append(luma)
        if (
            not earlier
            or index % self.full_scans[kind] == 0
            or self.config.slicing
            and index % self.tile_scans[kind] == 0
        ):
            return None
        mask = (np.max([np.abs(luma - e) for e in earlier], axis=0) > _GATE_DIFF).astype(np.uint8)
        if mask.mean() > _GATE_MAX:
            return None
        regions = self._change_regions(mask, kind)
        if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in regions) > _GATE_MAX * self.width * self.height:
            return None  # the regions with their context are most of the frame: scan it whole
        return regions

    def _change_regions(self, changed: np.ndarray, kind: int) -> list[tuple[int, int, int, int]]:
        """Frame regions around the changed blocks, with context as a crop has (the detectors score an
        object cut close by a region's edge lower: a fast plate on the 1080p bench clip was missed
        for half a second in close-cut changed regions and found with this margin)."""
        mask = cv2.dilate(changed.astype(np.uint8), np.ones((3, 3), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        b = _GATE_BLOCK
        return join(
            [self._with_context((x * b, y * b, (x + w) * b, (y + h) * b), kind) for x, y, w, h, _ in stats[1:count]]
        )

    def _with_context(self, box, kind: int) -> tuple[int, int, int, int]:
        """`box` (frame pixels, may be fractional) grown by half a crop's least size on each side, clipped."""
        m = _CROP_MIN[kind] // 2
        return (
            max(0, int(box[0]) - m),
            max(0, int(box[1]) - m),
            min(self.width, int(np.ceil(box[2])) + m),
            min(self.height, int(np.ceil(box[3])) + m),
        )

    # ------------------------------------------------------------------ full-frame scans
    def _scan(self, index: int, pixels: FramePixels, kinds: frozenset[int]) -> Detections:
        longest = max(self.width, self.height)
        parts = []
        for kind in sorted(kinds):
            side = detect_side(kind, longest)
            if self.config.slicing and index % self.tile_scans[kind] == 0:
                # The whole-frame pass at the scan's side plus the next tile, from the full-size frame.
                image = pixels.rgb(0, 0, self.width, self.height, 1.0)
                dets = self.detect(image, frozenset({kind}), side=side, tiles=self._next_tile(kind))
            else:
                image = pixels.rgb(0, 0, self.width, self.height, side / longest)
                dets = self.detect(image, frozenset({kind}))
            parts.append(_to_frame(dets, image, 0, 0, self.width, self.height))
        return Detections.concat(parts)

    def _next_tile(self, kind: int) -> Callable[[list], list]:
        """A tile pick that runs one tile per call, in turn."""
        turn = self._tile_turn[kind]
        self._tile_turn[kind] += 1
        return lambda tiles: [tiles[turn % len(tiles)]] if tiles else []

    # ------------------------------------------------------------------ regions: crops, changes
    def _regions(
        self, pixels: FramePixels, kind: int, regions: list[tuple[int, int, int, int]], as_scanned: bool = False
    ) -> Detections:
        """Detections in the regions; `as_scanned`: at the scan's scale (the pixels a scan would see)."""
        scan_scale = detect_side(kind, max(self.width, self.height)) / max(self.width, self.height)
        parts = []
        for x0, y0, x1, y1 in regions:
            scale = (
                scan_scale
                if as_scanned
                else max(scan_scale, min(_CROP_MAX_SCALE[kind], _CROP_SIDE / max(x1 - x0, y1 - y0)))
            )
            image = pixels.rgb(x0, y0, x1, y1, scale)
            parts.append(_to_frame(self.detect(image, frozenset({kind})), image, x0, y0, x1, y1))
        return Detections.concat(parts)


def around(boxes: np.ndarray, pad: float, least: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Square regions (x0, y0, x1, y1) centred on the boxes, padded by `pad` box sizes on each side,
    at least `least` pixels wide, clipped to the frame."""
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = max(least / 2, (0.5 + pad) * max(x1 - x0, y1 - y0))
        out.append(
            (
                max(0, int(cx - half)),
                max(0, int(cy - half)),
                min(width, int(np.ceil(cx + half))),
                min(height, int(np.ceil(cy + half))),
            )
        )
    return out


def join(regions: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The regions with overlapping ones replaced by their union, aligned to even pixels (4:2:0)."""
    todo = [[r[0] // 2 * 2, r[1] // 2 * 2, -(-r[2] // 2) * 2, -(-r[3] // 2) * 2] for r in regions]
    todo = [r for r in todo if r[2] - r[0] >= 2 and r[3] - r[1] >= 2]
    done: list[list[int]] = []
    while todo:
        a = todo.pop()
        for i, b in enumerate(done):
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                del done[i]
                todo.append([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
                break
        else:
            done.append(a)
    return [(r[0], r[1], r[2], r[3]) for r in done]


def _touches(box, regions: list[tuple[int, int, int, int]]) -> bool:
    return any(box[0] < x1 and x0 < box[2] and box[1] < y1 and y0 < box[3] for x0, y0, x1, y1 in regions)


def _inside(box, regions: list[tuple[int, int, int, int]]) -> bool:
    return any(x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1 for x0, y0, x1, y1 in regions)


def _to_frame(dets: Detections, image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> Detections:
    """Boxes found in `image` (the region x0..x1, y0..y1 of the frame, resized) in frame pixels."""
    if not len(dets):
        return dets
    xyxy = dets.xyxy.copy()
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]] * ((x1 - x0) / image.shape[1]) + x0
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]] * ((y1 - y0) / image.shape[0]) + y0
    return Detections(xyxy, dets.scores, dets.kinds)
