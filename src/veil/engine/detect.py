"""`Detector`: faces and plates for one RGB image, as `Detections` (original pixels, calibrated scores).

What runs, chosen by measurement on the dev sets (`bench/eval_detection.py`):

* **faces** (CenterFace): views at native resolution (longest side capped at 2048 px), upscaled to
  at most 2x / 2048 px for images small enough (faces below ~24 px), at half the native view's size
  and, where that leaves 300 px, at a quarter (large and close faces: the quarter view took facemask_faces
  recall 0.900 -> 0.907, precision 0.823 -> 0.844), each also mirrored (one batch); the costly views
  (mirrored native, 2x and its mirror) run only in windows around the cheap views' candidates (2x: the
  candidates lower than 96 px)
  (``FACE_LOOK_*``, `_look_around`: same recall and precision, 2-3x less face work), merged by
  weighted boxes fusion
  (`veil.engine.slicing.fuse`): a face most views agree on keeps its score, a box one view alone
  reports is discounted, which found more faces at a higher precision than the best single view;
  the fused box is then widened and moved down a little (``FACE_BOX_WIDEN``, ``FACE_BOX_DROP``), where
  both dev label sets put faces, and blended with the box its five landmarks place (``FACE_LM_*``);
* **plates** (YOLOv8n): one pass with the longest input side 1280 px (at 640 the model finds only
  0.81-0.88 of dev plates; at 1280, all);
* with ``config.slicing``: overlapping tiles on top of the whole-image passes (see
  `veil.engine.slicing`), for small objects in large photos;
* the passes are merged per kind without duplicates, then the calibrated thresholds
  (`veil.engine.calibration`) are applied.

Video and other callers that need speed pass ``face_side`` / ``plate_side`` to `Detector.detect`:
a single pass per kind with that longest input side (e.g. ``face_side=640, plate_side=640``),
no upscale pass. Model sessions are created once per process and shared by all detectors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from .bounds import plausible
from .calibration import Detector as ScoreScale
from .calibration import as_raw, calibrate, raw_threshold
from .config import ModelConfig
from .detections import FACE, PLATE, Detections, face_axis
from .plates import low_light_view
from .slicing import Tile, centres_in, detect_tiles, fuse, merge, tile_grid, windows

FACE_MAX_SIDE = 2048  # whole-image face pass: native resolution up to this longest side
FACE_UPSCALE = 2.0  # small-face pass: at most this factor ...
FACE_UPSCALE_MIN = 1.5  # ... and only when at least this factor fits under FACE_MAX_SIDE
FACE_UPSCALE_BELOW = 96  # ... and only around candidates lower than this (px; facemask R@.5 at 64: -0.002)
FACE_DOWNSCALES = (0.5, 0.25)  # large-face views: half and quarter the native view's size ...
FACE_DOWNSCALE_MIN_SIDE = 300  # ... each when it leaves at least this longest side
FACE_VIEW_FLOOR = 0.03  # raw score down to which each view reports faces into the fusion
FUSE_IOU = 0.4  # views' face boxes overlapping this much are one face (weighted boxes fusion)
# The costly views look only around the cheap views' faces of at least this raw score: each face's box
# grown FACE_LOOK_GROW times plus FACE_LOOK_MARGIN px a side (a detection counts when its centre is
# there), seen with FACE_LOOK_CONTEXT px of its surroundings a side.
FACE_LOOK_FLOOR = 0.2
FACE_LOOK_GROW = 1.2
FACE_LOOK_MARGIN = 4
FACE_LOOK_CONTEXT = 32
# Photos: CenterFace's box sits high and narrow on the face next to both dev label sets (median label
# vs box: 1.06 / 1.13 x wider, centre 0.085 / 0.046 box heights lower on facemask / dlib); the photo box
# is widened and moved down by these (box recall at IoU 0.5 on facemask_faces 0.887 -> 0.898, dlib 1.000).
FACE_BOX_WIDEN = 1.08
FACE_BOX_DROP = 0.05
# ... and then blended with a box placed by the five landmarks (eye centre E, mouth centre M, d = |M - E|):
# centred FACE_LM_CENTRE of the way from E to M, FACE_LM_SIZE = (width, height) in d. dlib_faces mean IoU of
# found faces 0.712 -> 0.736 (16 of 17 closer); facemask_faces R@.5 0.911 -> 0.915 (+1 and +2 on either half
# of the set, alike over a range of centres and sizes), its mean IoU unchanged, precision unchanged.
FACE_LM_BLEND = 0.25
FACE_LM_CENTRE = 0.45
FACE_LM_SIZE = (2.4, 2.8)
PLATE_SIDE = 1280  # whole-image plate pass: longest input side
LOW_LIGHT_SIDE = 800  # the low-light plate pass: downscaling averages out a dark frame's noise
FACE_TILE = 640  # slicing: face tile side in original pixels (doubled for large images)
TILE_OVERLAP = 0.25

_lock = threading.Lock()
TilePick = Callable[[list[Tile]], list[Tile]] | None


_nets: dict[tuple[str, str | None, int | None], Any] = {}


def _centerface(provider: str | None):
    from .faces import CenterFace

    return _net("centerface", provider, CenterFace)


def _plate_yolo(provider: str | None):
    from .plates import PlateYolo

    return _net("plates", provider, PlateYolo)


def _net(name: str, provider: str | None, make: Callable[[str | None], Any]) -> Any:
    """One model session per process, provider and `runtime.session_threads` count (None: the settings' count,
    read once, when the session opens; looking the settings up on every call cost ~0.5 ms a detection)."""
    from .runtime import threads_here

    key = (name, provider, threads_here())
    with _lock:
        if key not in _nets:
            _nets[key] = make(provider)
        return _nets[key]


def _ensure_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image HxWx3, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class Detector:
    """Detect what ``config`` asks for: faces if ``blur_face``, plates if ``enable_lp``."""

    def __init__(self, config: ModelConfig | None = None, provider: str | None = None) -> None:
        self.config = config or ModelConfig()
        self.provider = provider

    # ------------------------------------------------------------------ public
    def detect(
        self, image_rgb: np.ndarray, *, face_side: int | None = None, plate_side: int | None = None
    ) -> Detections:
        """All wanted kinds, merged and thresholded, without boxes that cannot be their kind
        (`veil.engine.bounds`). ``face_side`` / ``plate_side``: see module doc."""
        parts = []
        if self.config.wants_faces:
            parts.append(self.detect_faces(image_rgb, side=face_side))
        if self.config.wants_plates:
            parts.append(self.detect_plates(image_rgb, side=plate_side))
        return plausible(Detections.concat(parts), image_rgb.shape[1], image_rgb.shape[0])

    def detect_faces(
        self, image_rgb: np.ndarray, *, side: int | None = None, threshold: float | None = None, tiles: TilePick = None
    ) -> Detections:
        """Faces above ``threshold`` (calibrated; default ``config.blur_threshold``). ``tiles`` picks
        which of the slicing tiles to run (default: all; video runs one per scan, in turn)."""
        image = _ensure_rgb(image_rgb)
        t = self.config.blur_threshold if threshold is None else threshold
        net = _centerface(self.provider)
        h, w = image.shape[:2]
        long_side = max(h, w)
        if side:
            boxes, scores, marks = net.detect(
                image, max_side=side, scale=side / long_side, floor=raw_threshold("faces", t)
            )
            scores = calibrate("faces", scores)
        else:
            boxes, scores, marks = self._face_views(net, image, upscale=not self.config.slicing)
        if self.config.slicing:
            tile, scale = _tile_plan(long_side, FACE_TILE, FACE_MAX_SIDE)
            floor = raw_threshold("faces", t)
            tile_boxes, tile_scores, tile_cut = detect_tiles(
                image,
                lambda crop: net(crop, scale=scale, floor=floor),
                _pick(tiles, tile_grid(h, w, tile, TILE_OVERLAP)),
            )
            # Face tiles compete with the whole-image views on (calibrated) score alone: their 2x view
            # gave tighter boxes on the dev sets (recall and coverage fell when whole-image boxes won).
            boxes, scores, index = merge(
                np.concatenate([boxes, tile_boxes]),
                np.concatenate([scores, calibrate("faces", tile_scores)]),
                np.concatenate([np.zeros(len(boxes), bool), tile_cut]),
                return_index=True,
            )
            marks = np.concatenate([marks, np.full((len(tile_boxes), 10), np.nan, np.float32)])[index]
        keep = scores >= t - 1e-6
        boxes = boxes[keep] if side else _face_box(boxes[keep], w, h, marks[keep])
        return Detections.of_kind(boxes, scores[keep], FACE, marks[keep])

    @staticmethod
    def _face_views(net, image: np.ndarray, upscale: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image face views (each also mirrored) fused into one set, calibrated scores.
        ``upscale``: include the upscaled view (slicing's 2x tiles replace it).

        The costly views (the mirrored native view, the upscaled view and its mirror: 5 of the 6
        native-image costs) look only around the faces the cheap views (native, half and quarter size,
        the last two mirrored) report at raw ``FACE_LOOK_FLOOR`` or more (`slicing.windows`): on the dev
        sets every face they add is within those windows (same recall and precision, a third of the work).
        The upscaled views look only around the faces lower than ``FACE_UPSCALE_BELOW``; where they did not
        look, a face is fused as seen by two views fewer (facemask_faces: same recall, 30% less face work)."""
        h, w = image.shape[:2]
        long_side = max(h, w)
        native = min(1.0, FACE_MAX_SIDE / long_side)
        up = min(FACE_UPSCALE, FACE_MAX_SIDE / long_side)
        small = [native * s for s in FACE_DOWNSCALES if long_side * native * s >= FACE_DOWNSCALE_MIN_SIDE]
        views = [net.detect(image, scale=native, floor=FACE_VIEW_FLOOR)]
        views += [net.detect(image, scale=s, floor=FACE_VIEW_FLOOR, flip=True) for s in small]
        boxes, scores, _ = (np.concatenate(part) for part in zip(*views))
        seeds = boxes[scores >= FACE_LOOK_FLOOR]
        look = _windows(seeds, h, w)
        views.append(_look_around(net, image, look, native, False))
        count = 2 + 2 * len(small)
        upscaled = upscale and up >= FACE_UPSCALE_MIN
        if upscaled:
            up_look = _windows(seeds[seeds[:, 3] - seeds[:, 1] < FACE_UPSCALE_BELOW], h, w)
            views.append(_look_around(net, image, up_look, up, True))
            count += 2
        boxes, scores, marks = (np.concatenate(part) for part in zip(*views))
        looked = np.full(len(boxes), count)
        if upscaled:  # around the larger faces, the upscaled view and its mirror did not look
            looked[centres_in(boxes, _cores(look)) & ~centres_in(boxes, _cores(up_look))] -= 2
        boxes, scores, fused_marks = fuse(boxes, scores, marks, views=looked, iou=FUSE_IOU)
        assert fused_marks is not None  # fuse hands back the landmark columns it was given
        return boxes, calibrate("faces_fused", scores), fused_marks

    def detect_plates(
        self, image_rgb: np.ndarray, *, side: int | None = None, threshold: float | None = None, tiles: TilePick = None
    ) -> Detections:
        """Plates above ``threshold`` (calibrated; default ``config.lp_threshold``); ``tiles``: as for faces."""
        image = _ensure_rgb(image_rgb)
        t = self.config.lp_threshold if threshold is None else threshold
        floor = raw_threshold("plates", t)
        net = _plate_yolo(self.provider)
        h, w = image.shape[:2]
        passes = [net(image, size=_mult32(side or PLATE_SIDE), floor=floor)]
        cut = [np.zeros(len(passes[0][0]), bool)]
        if not side and (dark := low_light_view(image)) is not None:
            # Dark or colour-cast photo: a second pass on a corrected copy, whose boxes count as
            # secondary (a box of the original pass wins a tie; measured: the corrected copy's
            # boxes are looser on plates both find). Its scores have their own calibration.
            boxes, scores = net(
                dark, size=_mult32(min(LOW_LIGHT_SIDE, max(h, w))), floor=raw_threshold("plates_lowlight", t)
            )
            passes.append((boxes, as_raw("plates", scores, "plates_lowlight")))
            cut.append(np.zeros(len(passes[-1][0]), bool))
        if self.config.slicing and max(h, w) > PLATE_SIDE:
            # Plate tiles run at native resolution, and only where the whole-image pass downscales:
            # upscaled or smaller plate tiles added false positives and looser boxes on the dev sets
            # without finding more plates.
            tile = size = PLATE_SIDE
            boxes, scores, tile_cut = detect_tiles(
                image, lambda crop: net(crop, size=size, floor=floor), _pick(tiles, tile_grid(h, w, tile, TILE_OVERLAP))
            )
            passes.append((boxes, scores))
            cut.append(tile_cut)
        return self._finish("plates", PLATE, passes, cut, floor, len(passes) - 1)

    # ------------------------------------------------------------------ private
    @staticmethod
    def _finish(name: ScoreScale, kind: int, passes, cut, floor: float, tiled_passes: int) -> Detections:
        """Merge the passes, map scores. The last ``tiled_passes`` passes count as tile passes,
        whose boxes never replace a whole-image box (see `veil.engine.slicing.merge`)."""
        boxes = np.concatenate([b for b, _ in passes]).reshape(-1, 4)
        scores = np.concatenate([s for _, s in passes]).reshape(-1)
        cut_flags = np.concatenate(cut).reshape(-1)
        tiled = np.concatenate([np.full(len(s), i >= len(passes) - tiled_passes) for i, (_, s) in enumerate(passes)])
        keep = scores >= floor - 1e-6
        boxes, scores = merge(boxes[keep], scores[keep], cut_flags[keep], tiled[keep].astype(bool))
        return Detections.of_kind(boxes, calibrate(name, scores), kind)


def _face_box(boxes: np.ndarray, width: int, height: int, marks: np.ndarray | None = None) -> np.ndarray:
    """CenterFace boxes widened by FACE_BOX_WIDEN and moved down by FACE_BOX_DROP of their height, then
    blended with the box the landmarks place (FACE_LM_*) where they are usable
    (`detections.face_axis`); clipped to the image."""
    out = boxes.astype(np.float32, copy=True)
    grow = (out[:, 2] - out[:, 0]) * np.float32((FACE_BOX_WIDEN - 1) / 2)
    drop = (out[:, 3] - out[:, 1]) * np.float32(FACE_BOX_DROP)
    out[:, 0] -= grow
    out[:, 2] += grow
    out[:, 1] += drop
    out[:, 3] += drop
    if marks is not None and len(out):
        eyes, mouth, d, ok = face_axis(marks, out[:, 3] - out[:, 1])
        if ok.any():
            centre = eyes[ok] + FACE_LM_CENTRE * (mouth[ok] - eyes[ok])
            half = np.stack([d[ok] * (FACE_LM_SIZE[0] / 2), d[ok] * (FACE_LM_SIZE[1] / 2)], axis=1)
            placed = np.concatenate([centre - half, centre + half], axis=1)
            out[ok] = (1 - FACE_LM_BLEND) * out[ok] + FACE_LM_BLEND * placed.astype(np.float32)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def _windows(seeds: np.ndarray, h: int, w: int) -> list[tuple[Tile, np.ndarray]]:
    return windows(seeds, h, w, grow=FACE_LOOK_GROW, margin=FACE_LOOK_MARGIN, context=FACE_LOOK_CONTEXT)


def _cores(look: list[tuple[Tile, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.zeros((0, 4), np.float32)] + [cores for _, cores in look])


def _look_around(
    net, image: np.ndarray, look: list[tuple[Tile, np.ndarray]], scale: float, plain: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterFace at ``scale`` (mirrored; with ``plain`` also as is) in each window of ``look``: the faces
    whose centre lies in one of the window's cores (and in no earlier window's), in image pixels. The
    image is resized once and each window cut from it on the network's 32-pixel grid (its left and top
    edge on the grid of the view as is, its right edge on the grid of the mirrored view), so a window
    sees the pixels and cells the whole view would."""
    parts = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 10), np.float32))]
    if not look:
        return parts[0]
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = (
        image
        if (nh, nw) == (h, w)
        else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    )
    fx, fy = nw / w, nh / h
    earlier = [np.zeros((0, 4), np.float32)]  # a face counts in the first window whose cores hold it
    for t, cores in look:
        x0, y0 = int(t.x0 * fx) // 32 * 32, int(t.y0 * fy) // 32 * 32
        x1 = nw - int(nw - t.x1 * fx) // 32 * 32
        y1 = min(nh, int(np.ceil(t.y1 * fy)))
        boxes, scores, marks = net.detect(resized[y0:y1, x0:x1], floor=FACE_VIEW_FLOOR, flip=True, plain=plain)
        boxes = (boxes + np.array([x0, y0, x0, y0], np.float32)) / np.array([fx, fy, fx, fy], np.float32)
        marks = (marks + np.tile(np.array([x0, y0], np.float32), 5)) / np.tile(np.array([fx, fy], np.float32), 5)
        keep = centres_in(boxes, cores) & ~centres_in(boxes, np.concatenate(earlier))
        earlier.append(cores)
        parts.append((boxes[keep], scores[keep], marks[keep]))
    boxes, scores, marks = (np.concatenate(part) for part in zip(*parts))
    return boxes, scores, marks


def _pick(pick: TilePick, tiles: list[Tile]) -> list[Tile]:
    return tiles if pick is None else pick(tiles)


def _mult32(side: float) -> int:
    return max(32, int(round(side / 32)) * 32)


def _tile_plan(long_side: int, tile: int, whole_side: int) -> tuple[int, float]:
    """(tile side in original pixels, inference scale). Images that the whole-image pass sees at
    native resolution: tiles upscaled 2x, so objects half that size are found; larger images (the
    whole-image pass downscales them): tiles of twice the side at native resolution."""
    if long_side <= whole_side:
        return tile, 2.0
    return 2 * tile, 1.0


_detectors: dict[tuple[ModelConfig, str | None], Detector] = {}


def get_detector(config: ModelConfig | None = None, provider: str | None = None) -> Detector:
    """A per-process shared `Detector` for ``config`` (the model sessions are shared regardless)."""
    config = config or ModelConfig()
    with _lock:
        return _detectors.setdefault((config, provider), Detector(config, provider))
