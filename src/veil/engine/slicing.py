"""Box arithmetic, tiled (sliced) inference and the merge that removes duplicate boxes.

Slicing runs a detector on overlapping tiles (each resized so its longest side is the detector's
input size, which enlarges small objects) and merges the tiles' boxes with the whole-image pass.
Merging, per kind:

* boxes are visited whole-image boxes first, then whole tile boxes, then cut ones, each group by
  descending score (the whole-image pass sees an object's full context, so its box wins a tie);
  a box suppresses every later box whose IoU with it is at least ``iou`` (ordinary NMS), and
* a box that a tile edge cut off (it touches a tile edge that is not an image edge) is absorbed into
  the box that mostly contains it (``ios``: intersection over the cut box's own area) — the kept box
  grows to the union, so the part of an object seen by a neighbouring tile is never lost.

Everything here works on plain arrays: ``boxes`` float32 Nx4 (x1, y1, x2, y2), ``scores`` float32 N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BoxFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A detector on one image (crop): RGB uint8 HxWx3 -> (boxes Nx4 in that crop's pixels, scores N)."""


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas, shape len(a) x len(b)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    # Row by row against the survivors only: heatmap decoders hand over thousands of overlapping
    # candidates, and a full N x N IoU matrix cost a fifth of the face detector's time.
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        keep.append(order[0])
        rest = order[1:]
        order = rest[iou_matrix(boxes[order[:1]], boxes[rest])[0] < iou]
    return np.asarray(keep, dtype=np.int64)


def merge(
    boxes: np.ndarray,
    scores: np.ndarray,
    cut: np.ndarray | None = None,
    tiled: np.ndarray | None = None,
    *,
    iou: float = 0.5,
    ios: float = 0.6,
    return_index: bool = False,
):
    """Merge boxes from several passes into one set without duplicates (see the module docstring).

    ``cut[i]`` marks boxes clipped by a tile edge, ``tiled[i]`` boxes from tiles. Returns the kept
    boxes (grown by absorbed cut boxes) and their scores, best first; with ``return_index`` also
    each kept box's index in the input (to carry per-box data such as landmarks along).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    cut = np.zeros(len(boxes), bool) if cut is None else np.asarray(cut, bool)
    tiled = cut if tiled is None else np.asarray(tiled, bool) | cut
    if len(boxes) < 2:
        return (boxes.copy(), scores.copy()) + ((np.arange(len(boxes)),) if return_index else ())
    # A cut box never stands in for the full object; a tile's box never replaces the whole image's.
    order = np.lexsort((-scores, tiled.astype(int) + cut))
    boxes, scores, cut = boxes[order], scores[order], cut[order]
    ious = iou_matrix(boxes, boxes)
    inter = intersections(boxes, boxes)
    own = inter / np.maximum(areas(boxes), 1e-9)[None, :]  # own[i, j]: share of box j inside box i
    alive = np.ones(len(boxes), bool)
    out_boxes, out_scores, out_index = [], [], []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        later = np.arange(len(boxes)) > i
        absorbed = alive & later & cut & (own[i] >= ios)
        dup = alive & later & (ious[i] >= iou)
        box = boxes[i].copy()
        if absorbed.any():
            grown = boxes[absorbed]
            box[:2] = np.minimum(box[:2], grown[:, :2].min(axis=0))
            box[2:] = np.maximum(box[2:], grown[:, 2:].max(axis=0))
        alive &= ~(absorbed | dup)
        alive[i] = False
        out_boxes.append(box)
        out_index.append(order[i])
        out_scores.append(max(scores[i], scores[absorbed | dup].max(initial=0.0)))
    kept_scores = np.asarray(out_scores, np.float32)
    rank = np.argsort(-kept_scores, kind="stable")
    kept = np.asarray(out_boxes, np.float32)[rank], kept_scores[rank]
    return kept + ((np.asarray(out_index, int)[rank],) if return_index else ())


@dataclass(frozen=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int


def tile_grid(height: int, width: int, tile: int, overlap: float = 0.25) -> list[Tile]:
    """Square tiles of side ``tile`` (smaller when the image is) covering the image, neighbours
    overlapping by at least ``overlap`` of a tile; the last row/column is flush with the image edge."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        count = -(-(length - tile) // step) + 1
        return [round(i * (length - tile) / (count - 1)) for i in range(count)]

    return [Tile(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def detect_tiles(
    image: np.ndarray, detect: BoxFn, tiles: list[Tile], edge: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``detect`` on every tile; boxes in image pixels, scores, and which boxes a tile edge cut."""
    height, width = image.shape[:2]
    all_boxes, all_scores, all_cut = [], [], []
    for t in tiles:
        boxes, scores = detect(image[t.y0 : t.y1, t.x0 : t.x1])
        if not len(boxes):
            continue
        boxes = boxes + np.array([t.x0, t.y0, t.x0, t.y0], np.float32)
        cut = (
            ((t.x0 > 0) & (boxes[:, 0] <= t.x0 + edge))
            | ((t.y0 > 0) & (boxes[:, 1] <= t.y0 + edge))
            | ((t.x1 < width) & (boxes[:, 2] >= t.x1 - edge))
            | ((t.y1 < height) & (boxes[:, 3] >= t.y1 - edge))
        )
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_cut.append(cut)
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), bool)
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cut)


def fuse(
    boxes: np.ndarray,
    scores: np.ndarray,
    extra: np.ndarray | None = None,
    *,
    views: int | np.ndarray = 1,
    iou: float = 0.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Weighted boxes fusion of ``views`` views' boxes of the same image (test-time augmentation).

    Boxes are visited by descending score; each joins the cluster whose fused box it overlaps most
    (IoU >= ``iou``) or starts a new one. A cluster's box (and ``extra`` row, e.g. landmarks; NaN
    rows left out) is the score-weighted mean of its members'. Its score is the members' mean times
    min(members, views) / views: what most views agree on keeps its score, what one view alone
    reports (most false positives) is discounted. ``views`` may be given per box (how many views looked
    where it lies); a cluster then counts its members' largest. Returns fused boxes, scores and extra, best first.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    looked = np.broadcast_to(np.asarray(views), scores.shape)[order]
    extra = None if extra is None else np.asarray(extra, np.float32)[order]
    members: list[list[int]] = []
    fused = np.zeros((0, 4), np.float32)
    for i in range(len(boxes)):
        if len(fused):
            overlaps = iou_matrix(boxes[i : i + 1], fused)[0]
            j = int(np.argmax(overlaps))
            if overlaps[j] >= iou:
                members[j].append(i)
                w = scores[members[j]]
                fused[j] = (boxes[members[j]] * w[:, None]).sum(axis=0) / w.sum()
                continue
        members.append([i])
        fused = np.concatenate([fused, boxes[i : i + 1]])
    counts = [int(looked[m].max()) for m in members]
    fused_scores = np.array([scores[m].mean() * min(len(m), n) / n for m, n in zip(members, counts)], np.float32)
    fused_extra = None
    if extra is not None:
        fused_extra = np.full((len(members), extra.shape[1]), np.nan, np.float32)
        for j, m in enumerate(members):
            rows = extra[m]
            ok = np.isfinite(rows).all(axis=1)
            if ok.any():
                fused_extra[j] = (rows[ok] * scores[m][ok, None]).sum(axis=0) / scores[m][ok].sum()
    rank = np.argsort(-fused_scores, kind="stable")
    return fused[rank], fused_scores[rank], None if fused_extra is None else fused_extra[rank]


def windows(
    boxes: np.ndarray, height: int, width: int, *, grow: float, margin: float, context: float
) -> list[tuple[Tile, np.ndarray]]:
    """Where to look again around ``boxes`` (e.g. a costlier view around a cheap view's candidates):
    each box grown ``grow`` times plus ``margin`` pixels a side is a *core*; each core plus ``context``
    pixels a side (the detector's view of the surroundings) is a window. Overlapping windows are merged
    into their bounding rectangle (until none overlap), so a face near a core's edge keeps the context
    it has in the whole image (measured: windows that stayed apart and overlapped lost faces). Returns
    (window, its cores as Nx4 array), in image pixels, clipped to the image; a detection counts when its
    centre lies in one of the window's cores (`centres_in`)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (grow / 2) + margin
    limit = np.array([width, height, width, height], np.float32)
    cores = np.clip(np.concatenate([centre - half, centre + half], axis=1), 0, limit)
    wins = np.clip(cores + np.array([-context, -context, context, context], np.float32), 0, limit)
    owner = np.arange(len(boxes))  # window of each core
    while len(wins) > 1:
        touch = intersections(wins, wins) > 0
        label = np.arange(len(wins))
        while True:  # connected components: each window takes the lowest label among those it touches
            lower = np.where(touch, label[None, :], len(wins)).min(axis=1)
            lower = np.minimum(label, lower[lower])
            if (lower == label).all():
                break
            label = lower
        ids, label = np.unique(label, return_inverse=True)
        if len(ids) == len(wins):
            break
        wins = np.stack(
            [
                np.concatenate([wins[label == k, :2].min(axis=0), wins[label == k, 2:].max(axis=0)])
                for k in range(len(ids))
            ]
        )
        owner = label[owner]
    out = []
    for k, w in enumerate(wins):
        x0, y0 = int(np.floor(w[0])), int(np.floor(w[1]))
        out.append((Tile(x0, y0, max(x0 + 1, int(np.ceil(w[2]))), max(y0 + 1, int(np.ceil(w[3])))), cores[owner == k]))
    return out


def centres_in(boxes: np.ndarray, cores: np.ndarray) -> np.ndarray:
    """Per box: does its centre lie in one of ``cores``?"""
    if not len(boxes) or not len(cores):
        return np.zeros(len(boxes), bool)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (
        (cx[:, None] >= cores[None, :, 0])
        & (cx[:, None] < cores[None, :, 2])
        & (cy[:, None] >= cores[None, :, 1])
        & (cy[:, None] < cores[None, :, 3])
    ).any(axis=1)
