"""Tracking faces and plates across video frames so that no frame flashes an unblurred object.

Two parts, both working on the engine's one box currency (`Detections`):

* `Tracker` associates each frame's detections with existing tracks, ByteTrack-style: a constant
  velocity Kalman filter predicts every track's box, confident detections are matched first by IoU
  (optimal assignment with `lap`), those left over again with boxes grown by half their size (C-BIoU:
  a small plate moving more than its own height between detector runs), then low-score detections
  may only *continue* a track (a face whose score dips below the threshold for a few frames stays
  blurred), never start one.
* `VideoTracker` adds a short look-ahead (a bounded number of frames) and decides the boxes that are
  finally redacted in each frame: observed boxes, linear interpolation through gaps of up to
  `max_gap` frames (missed detections, frames the detector skipped), extrapolation `lead` frames
  before a track's first and `trail` frames after its last detection (longer when it was last seen
  at the frame edge: it is probably leaving; the box spans from where the object was seen towards
  where its velocity takes it, with a motion margin, never a size extrapolated from the detections:
  `lead_box`), and a centred moving average so the blur does not jitter. A smoothed box is never
  smaller than the raw one; every box is clipped to the frame.

Frames are identified by their decode index; detections of frames the detector did not run on are
pushed as `None`. Memory is bounded: tracks and observations older than the look-ahead are dropped.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import lap
import numpy as np

from .detections import FACE, PLATE, Detections


@dataclass(frozen=True)
class TrackingParams:
    max_gap: int = 15  # frames a track may go undetected and still be bridged
    lead: int = 8  # frames blurred before a track's first detection
    trail: int = 8  # frames blurred after its last detection
    edge_trail: int = 20  # ... when it was last seen touching the frame border
    smooth: int = 2  # radius (frames) of the centred moving average on boxes
    match_iou: float = 0.2  # minimum IoU to continue a track with a confident detection
    low_match_iou: float = 0.4  # ... with a low-score detection (second ByteTrack stage)
    grow: float = 0.04  # extrapolated boxes get a margin of this fraction of their size per frame (each side)
    max_grow: float = 0.25  # ... at most: 1.5x the detection's size plus the distance it moves
    max_shift: float = 1.0  # an extrapolated box moves at most this many box sizes from where it was seen
    max_lead_shift: float = 2.0  # ... before its first detection, the box spans this many sizes of its path
    max_speed: float = 1.0  # ... which it follows at most this many box sizes a frame (a fast object found late)
    match_buffer: float = 0.5  # second association pass with boxes grown by this much (C-BIoU)

    @classmethod
    def for_rate(cls, fps: float, stride: int = 1, scan: int = 1) -> TrackingParams:
        """Parameters in frames for a video at `fps` whose detector runs every `stride`-th frame and
        looks for new objects (full-frame scans) every `scan`-th frame: a new object is covered from
        two scans before its first detection."""
        fps = fps if fps and fps > 0 else 30.0
        per = max(1, stride)
        return cls(
            max_gap=max(2 * per, min(round(0.6 * fps), 30)),
            lead=max(2 * per, 2 * scan, round(0.25 * fps)),
            trail=max(2 * per, round(0.25 * fps)),
            edge_trail=max(3 * per, round(0.7 * fps)),
            smooth=2,
            grow=min(0.08, 1.2 / fps),
        )

    @property
    def horizon(self) -> int:
        """Frames of look-ahead a frame needs before its boxes are final."""
        return max(self.max_gap + 1, self.lead) + self.smooth


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    a = a[:, None, :]
    b = b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-6)


class _Kalman:
    """Constant-velocity Kalman filter on (cx, cy, w, h); noise scales with the box size (ByteTrack)."""

    _POS, _VEL = 1 / 20, 1 / 160

    def __init__(self, box: np.ndarray) -> None:
        z = _to_cxcywh(box)
        self.x = np.concatenate([z, np.zeros(4)])
        std = np.array(
            [
                2 * self._POS,
                2 * self._POS,
                2 * self._POS,
                2 * self._POS,
                10 * self._VEL,
                10 * self._VEL,
                10 * self._VEL,
                10 * self._VEL,
            ]
        )
        self.P = np.diag((std * np.r_[z[[2, 3, 2, 3]], z[[2, 3, 2, 3]]]) ** 2)

    def predict(self, dt: int) -> None:
        if dt <= 0:
            return
        F = np.eye(8)
        F[:4, 4:] = dt * np.eye(4)
        size = self.x[[2, 3, 2, 3]]
        q = np.r_[self._POS * size, self._VEL * size] ** 2 * dt
        self.x = F @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.P = F @ self.P @ F.T + np.diag(q)

    def peek(self, dt: int) -> np.ndarray:
        """The box predicted `dt` frames ahead, without changing the state."""
        cx, cy, w, h = self.x[:4] + max(dt, 0) * self.x[4:]
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def update(self, box: np.ndarray) -> None:
        z = _to_cxcywh(box)
        r = np.diag((self._POS * z[[2, 3, 2, 3]]) ** 2)
        S = self.P[:4, :4] + r
        K = self.P[:, :4] @ np.linalg.inv(S)
        self.x = self.x + K @ (z - self.x[:4])
        self.P = self.P - K @ self.P[:4, :]

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _centre(box: np.ndarray) -> np.ndarray:
    return (np.asarray(box[:2], np.float64) + np.asarray(box[2:], np.float64)) / 2


def lead_box(
    box: np.ndarray, velocity: np.ndarray, dt: int, travel: float, window: float, p: TrackingParams
) -> np.ndarray:
    """Where an object seen at `box` may be `dt` frames later (earlier when negative), moving at
    `velocity` (its centre's, px a frame): its own size, never one extrapolated from the detections
    (a plate entering the frame grows in its first detections, and a box sized backwards from them
    covered half the car), moved along the velocity at most `travel` box sizes and spanning back
    from there towards where it was seen over at most `window` box sizes (objects often move in
    steps - held frames, detector jitter - so a box moved all the way left the object behind), plus
    a margin of `grow` box sizes a frame on each side (at most `max_grow`) for a change of speed or
    course. The frame clips it (`_clip`): an object that can only just be entering at an edge is
    covered in the strip along that edge where it can be, not over the path it has not taken yet."""
    box = np.asarray(box, np.float64)
    size = box[2:] - box[:2]
    moved = np.clip(np.asarray(velocity, np.float64) * dt, -travel * size, travel * size)
    back = moved - np.clip(moved, -window * size, window * size)  # the near end of the span
    ends = np.array([box + np.r_[back, back], box + np.r_[moved, moved]])
    margin = min(p.max_grow, p.grow * abs(dt)) * size
    return np.r_[ends[:, :2].min(axis=0) - margin, ends[:, 2:].max(axis=0) + margin]


def _to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


@dataclass(eq=False)
class Track:
    id: int
    kind: int
    kalman: _Kalman
    last_predicted: int
    frames: list[int] = field(default_factory=list)  # sorted frame indices with an observation
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def observe(self, index: int, box: np.ndarray, score: float) -> None:
        self.frames.append(index)
        self.boxes.append(np.asarray(box, np.float64))
        self.scores.append(float(score))


class Tracker:
    """Online association of detections with tracks (kinds never mix)."""

    def __init__(self, params: TrackingParams, high: dict[int, float]) -> None:
        self.params = params
        self.high = high  # kind -> score from which a detection may start a track
        self.active: list[Track] = []
        self._next_id = 1

    def update(self, index: int, dets: Detections) -> list[Track]:
        """Associate the detections of frame `index`; returns the tracks started in this frame."""
        self.active = [t for t in self.active if index - t.last <= self.params.max_gap]
        for track in self.active:
            track.kalman.predict(index - track.last_predicted)
            track.last_predicted = index
        started: list[Track] = []
        for kind in np.unique(dets.kinds):
            started += self._update_kind(index, dets.kind(int(kind)), int(kind))
        self.active += started
        return started

    def predict(self, index: int, kind: int) -> np.ndarray:
        """Predicted boxes (N x 4) in frame `index` of the live tracks of `kind`."""
        live = [t for t in self.active if t.kind == kind and index - t.last <= self.params.max_gap]
        return np.array([t.kalman.peek(index - t.last_predicted) for t in live]).reshape(-1, 4)

    def _update_kind(self, index: int, dets: Detections, kind: int) -> list[Track]:
        p = self.params
        pool = [t for t in self.active if t.kind == kind]
        high = dets.scores >= self.high.get(kind, 0.0)
        new = np.flatnonzero(high)
        # Stages (minimum IoU, box buffer): 0 confident detections; 1 confident ones left over, again
        # with boxes grown by `match_buffer` (C-BIoU: a plate moving more than its own height between
        # detector runs does not overlap its prediction); 2 low scores, which only continue tracks.
        for stage, min_iou, buffer in (
            (0, p.match_iou, 0.0),
            (1, p.match_iou, p.match_buffer),
            (2, p.low_match_iou, 0.0),
        ):
            idx = new if stage < 2 else np.flatnonzero(~high)
            track_boxes = np.array([t.kalman.box for t in pool]).reshape(-1, 4)
            pairs, unmatched = _associate(_buffered(track_boxes, buffer), _buffered(dets.xyxy[idx], buffer), min_iou)
            for ti, di in pairs:
                d = idx[di]
                pool[ti].kalman.update(dets.xyxy[d])
                pool[ti].observe(index, dets.xyxy[d], dets.scores[d])
            taken = {ti for ti, _ in pairs}
            pool = [t for i, t in enumerate(pool) if i not in taken]
            if stage < 2:
                new = idx[unmatched]  # only confident detections may start a track
        started = []
        for d in new:
            track = Track(self._next_id, kind, _Kalman(dets.xyxy[d]), index)
            self._next_id += 1
            track.observe(index, dets.xyxy[d], dets.scores[d])
            started.append(track)
        return started


def _buffered(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """xyxy boxes grown on each side by `buffer` times their width / height."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not buffer:
        return boxes
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + buffer * np.stack([-w, -h, w, h], axis=1)


def _associate(tracks: np.ndarray, dets: np.ndarray, min_iou: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Optimal one-to-one matching by IoU; returns (track, detection) pairs and unmatched detections."""
    if len(tracks) == 0 or len(dets) == 0:
        return [], np.arange(len(dets))
    cost = 1.0 - iou_matrix(tracks, dets.astype(np.float64))
    _, x, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1.0 - min_iou)
    pairs = [(int(t), int(d)) for t, d in enumerate(x) if d >= 0]
    matched = {d for _, d in pairs}
    return pairs, np.array([d for d in range(len(dets)) if d not in matched], np.int64)


# Untracked kinds: each box also covers this many frames before and after its own, where that frame has
# no box of its own on the object (IoU below _MARGIN_IOU): a detector that misses an object in one
# frame of a run does not publish it there.
UNTRACKED_MARGIN = 1
_MARGIN_IOU = 0.5


class VideoTracker:
    """Tracks with a bounded look-ahead: push each frame's detections, get final boxes back in order.

    `push(index, dets)` takes the detections of frame `index` (frames pushed in order 0, 1, 2, ...;
    `None` where the detector did not run) and returns the frames whose boxes are now final, as
    `(index, Detections)` with `track_ids` set (-1 for kinds that are not tracked). `flush()` returns
    the rest at the end of the video. A frame is final `params.horizon` frames after it was pushed.
    """

    def __init__(
        self,
        params: TrackingParams,
        frame_size: tuple[int, int],
        thresholds: dict[int, float],
        tracked_kinds: frozenset[int] | set[int] = frozenset({FACE, PLATE}),
    ) -> None:
        self.params = params
        self.width, self.height = frame_size
        self.thresholds = thresholds  # kind -> calibrated threshold (lower scores only continue tracks)
        self.tracked_kinds = set(tracked_kinds)
        self._tracker = Tracker(params, thresholds)
        self._tracks: list[Track] = []  # every track that may still put a box in a pending frame
        self._pending: deque[int] = deque()
        self._untracked: dict[int, Detections] = {}

    def push(self, index: int, dets: Detections | None) -> list[tuple[int, Detections]]:
        self._pending.append(index)
        if dets is not None and len(dets):
            tracked = np.isin(dets.kinds, list(self.tracked_kinds))
            rest = dets[~tracked]
            rest = rest[rest.scores >= np.array([self.thresholds.get(int(k), 0.0) for k in rest.kinds])]
            if len(rest):
                self._untracked[index] = Detections(
                    rest.xyxy, rest.scores, rest.kinds, np.full(len(rest), -1, np.int64)
                )
            self._tracks += self._tracker.update(index, dets[tracked])
        return self._emit(index - self.params.horizon)

    def predict(self, index: int, kind: int) -> np.ndarray:
        """Where the live tracks of `kind` are expected in frame `index` (xyxy, N x 4), to re-detect
        them there."""
        return self._tracker.predict(index, kind)

    def flush(self) -> list[tuple[int, Detections]]:
        return self._emit(self._pending[-1] if self._pending else -1)

    # ------------------------------------------------------------------ final boxes
    def _emit(self, upto: int) -> list[tuple[int, Detections]]:
        out = []
        while self._pending and self._pending[0] <= upto:
            index = self._pending.popleft()
            out.append((index, self._final(index)))
        if out:
            oldest = self._pending[0] if self._pending else upto + 1
            self._prune(oldest)
            for g in [g for g in self._untracked if g < oldest - UNTRACKED_MARGIN]:
                del self._untracked[g]
        return out

    def _final(self, f: int) -> Detections:
        boxes, scores, kinds, ids = [], [], [], []
        for track in self._tracks:
            raw = self._raw(track, f)
            if raw is None:
                continue
            box, score = raw
            near = [
                r[0]
                for d in range(-self.params.smooth, self.params.smooth + 1)
                if (r := (raw if d == 0 else self._raw(track, f + d))) is not None
            ]
            smooth = np.mean(near, axis=0)
            box = np.r_[np.minimum(smooth[:2], box[:2]), np.maximum(smooth[2:], box[2:])]
            boxes.append(box)
            scores.append(score)
            kinds.append(track.kind)
            ids.append(track.id)
        dets = Detections(np.array(boxes).reshape(-1, 4), np.array(scores), np.array(kinds), np.array(ids))
        return self._clip(Detections.concat([dets, self._untracked_near(f)]))

    def _untracked_near(self, f: int) -> Detections:
        """Untracked boxes of frame `f`, then those of its neighbours within UNTRACKED_MARGIN frames that
        no box already taken of the same kind overlaps."""
        parts = [self._untracked.get(f, Detections(track_ids=np.zeros(0, np.int64)))]
        for g in sorted(range(f - UNTRACKED_MARGIN, f + UNTRACKED_MARGIN + 1), key=lambda g: abs(g - f)):
            if g == f or g not in self._untracked:
                continue
            near, taken = self._untracked[g], Detections.concat(parts)
            if len(taken):
                overlap = iou_matrix(near.xyxy.astype(np.float64), taken.xyxy.astype(np.float64))
                overlap[near.kinds[:, None] != taken.kinds[None, :]] = 0.0
                near = near[overlap.max(axis=1) < _MARGIN_IOU]
            parts.append(near)
        return Detections.concat(parts)

    def _clip(self, dets: Detections) -> Detections:
        if not len(dets):
            return Detections(track_ids=np.zeros(0, np.int64))
        xyxy = dets.xyxy.copy()
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, self.width)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, self.height)
        keep = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
        return Detections(xyxy, dets.scores, dets.kinds, dets.track_ids)[keep]

    def _raw(self, t: Track, f: int) -> tuple[np.ndarray, float] | None:
        """The track's box in frame `f` before smoothing, or None if it is not there."""
        p = self.params
        i = bisect.bisect_left(t.frames, f)
        if i < len(t.frames) and t.frames[i] == f:
            return t.boxes[i], t.scores[i]
        prev = i - 1 if i > 0 else None
        nxt = i if i < len(t.frames) else None
        if prev is not None and nxt is not None and t.frames[nxt] - t.frames[prev] <= p.max_gap + 1:  # bridged
            fp, fn = t.frames[prev], t.frames[nxt]
            bp, bn = t.boxes[prev], t.boxes[nxt]
            a = (f - fp) / (fn - fp)
            # Between the two detections' sizes, on the line between their centres, with a margin of
            # a quarter of the distance between them (the object need not move in a straight line).
            margin = 0.25 * np.abs(_centre(bn) - _centre(bp))
            box = (1 - a) * bp + a * bn + np.r_[-margin, margin]
            return box, min(t.scores[prev], t.scores[nxt])
        parts = []
        if nxt is not None and t.frames[nxt] - f <= p.lead:
            parts.append((self._extrapolate(t, nxt, f), t.scores[nxt]))
        if prev is not None and f - t.frames[prev] <= self._trail(t, prev):
            parts.append((self._extrapolate(t, prev, f), t.scores[prev]))
        if not parts:
            return None
        box = parts[0][0]
        for other, _ in parts[1:]:
            box = np.r_[np.minimum(box[:2], other[:2]), np.maximum(box[2:], other[2:])]
        return box, max(s for _, s in parts)

    def _trail(self, t: Track, i: int) -> int:
        """Frames to keep blurring after observation `i`: longer when the object is heading out of
        the frame (it reaches the border within the normal trail), where detectors lose it first."""
        x1, y1, x2, y2 = self._extrapolate(t, i, t.frames[i] + self.params.trail)
        margin = 0.02 * max(self.width, self.height)
        at_edge = x1 <= margin or y1 <= margin or x2 >= self.width - margin or y2 >= self.height - margin
        return self.params.edge_trail if at_edge else self.params.trail

    def _extrapolate(self, t: Track, i: int, f: int) -> np.ndarray:
        """Box of observation `i` in frame `f` (`lead_box`): after it, up to `max_shift` sizes from where it
        was seen; before a track's first detection, along its path at up to `max_speed` sizes a frame."""
        fi = t.frames[i]
        step = -1 if f > fi else 1  # look backwards in time for a forward extrapolation and vice versa
        j = i
        while 0 <= j + step < len(t.frames) and abs(t.frames[j + step] - fi) <= 10:
            j += step
        velocity = (_centre(t.boxes[i]) - _centre(t.boxes[j])) / (fi - t.frames[j]) if j != i else np.zeros(2)
        p = self.params
        if i == 0 and f < fi:  # before the first detection: along its whole path, near its end
            return lead_box(t.boxes[i], velocity, f - fi, p.max_speed * abs(f - fi), p.max_lead_shift, p)
        return lead_box(t.boxes[i], velocity, f - fi, p.max_shift, p.max_shift, p)

    def _prune(self, oldest_pending: int) -> None:
        p = self.params
        keep_from = oldest_pending - p.smooth - p.max_gap - 12
        alive = []
        for t in self._tracks:
            if t.last + p.edge_trail + p.smooth < oldest_pending and t not in self._tracker.active:
                continue
            cut = bisect.bisect_left(t.frames, keep_from)
            cut = min(cut, len(t.frames) - 2)
            if cut > 0:
                del t.frames[:cut], t.boxes[:cut], t.scores[:cut]
            alive.append(t)
        self._tracks = alive
