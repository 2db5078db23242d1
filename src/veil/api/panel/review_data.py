"""What the review pages read, kept close at hand: local copies of a task's input and detections document
(bounded), and a document's candidates as arrays (`DocIndex`: a photo's candidates; a video's frames, tracks
and the places to look), built once per document and kept for the next requests (bounded too)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...engine.document import Header, parse_header, read_edits
from ...engine.render import track_candidates

NEAR = 0.2  # "just below the threshold": within this of it (the per-file report's below_threshold)


class Bounded(OrderedDict):
    """The `size` most recently used values; `get_or_make` builds a missing one once, under a lock."""

    def __init__(self, size: int, on_drop=None) -> None:
        super().__init__()
        self.size, self._lock, self._on_drop = size, threading.Lock(), on_drop
        self._making: dict = {}

    def get_or_make(self, key, make):
        with self._lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
            gate = self._making.setdefault(key, threading.Lock())
        with gate:  # one build per key; others wait for it
            with self._lock:
                if key in self:
                    return self[key]
            value = make()
            with self._lock:
                self[key] = value
                self._making.pop(key, None)
                while len(self) > self.size:
                    _, dropped = self.popitem(last=False)
                    if self._on_drop:
                        self._on_drop(dropped)
            return value


class LocalFiles:
    """A blob as a local file: the embedded store's own file in place, another store's blob downloaded into a
    temporary folder (the newest `size` kept)."""

    def __init__(self, size: int = 8) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="veil-review-"))
        self._files = Bounded(size, on_drop=lambda p: p.unlink(missing_ok=True) if self._dir in p.parents else None)

    def path(self, store, container: str, blob: str) -> Path:
        return self._files.get_or_make((container, blob), lambda: self._fetch(store, container, blob))

    def _fetch(self, store, container: str, blob: str) -> Path:
        with store.open_read(container, blob) as src:
            name = getattr(src, "name", None)
            if isinstance(name, str) and os.path.isfile(name):
                return Path(name)
            dst = self._dir / f"{len(os.listdir(self._dir))}-{Path(blob).name}"
            with dst.open("wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
        return dst


@dataclass
class DocIndex:
    """A document's candidates as arrays: `frame` and `n` (its id is "frame.n"), `table` rows [kind, x1, y1,
    x2, y2, score], `track` (0: none; a video's tracks as a render at the document's config numbers them)."""
    header: Header
    frames: int
    pts: np.ndarray
    ran: np.ndarray
    frame: np.ndarray
    n: np.ndarray
    table: np.ndarray
    track: np.ndarray
    edits: list = field(default_factory=list)

    @classmethod
    def load(cls, doc: Path) -> DocIndex:
        pts, ran, frame, n, rows = [], [], [], [], []
        with gzip.open(doc, "rt", encoding="utf-8") as f:
            header = parse_header(f.readline(), doc)
            for line in f:
                if line.startswith('{"edit"'):
                    continue
                data = json.loads(line)
                pts.append(data["pts"] if data["pts"] is not None else np.nan)
                ran.append(data["ran"])
                for k, row in enumerate(data["c"]):
                    frame.append(data["i"])
                    n.append(k)
                    rows.append(row)
        track = np.zeros(len(frame), np.int32)
        if header.media == "video" and rows:
            where = {f"{i}.{k}": m for m, (i, k) in enumerate(zip(frame, n))}
            for track_id, ids in track_candidates(doc).items():
                track[[where[i] for i in ids]] = track_id
        return cls(header, len(pts), np.asarray(pts, np.float64), np.asarray(ran, bool),
                   np.asarray(frame, np.int32), np.asarray(n, np.int16),
                   np.asarray(rows, np.float32).reshape(-1, 6), track,
                   [e.model_dump() for e in read_edits(doc)])

    def candidates(self, start: int = 0, stop: int | None = None) -> list[list]:
        """[id, kind, x1, y1, x2, y2, score, track] of the frames start..stop-1."""
        lo, hi = np.searchsorted(self.frame, [start, self.frames if stop is None else stop])
        return [[f"{self.frame[m]}.{self.n[m]}", int(self.table[m, 0]), *(round(float(v), 1) for v in self.table[m, 1:5]),
                 round(float(self.table[m, 5]), 3), int(self.track[m])] for m in range(lo, hi)]

    def timeline(self, thresholds: dict[int, float]) -> dict:
        """A video's lanes (one per track: kind, the runs of frames with a candidate of its own; the gaps
        between them are bridged) and the places to look: frames with a candidate within NEAR below the
        threshold of its kind that no track draws."""
        lanes = []
        for track_id in np.unique(self.track[self.track > 0]):
            rows = np.flatnonzero(self.track == track_id)
            frames = self.frame[rows]
            breaks = np.flatnonzero(np.diff(frames) > 1)
            starts, ends = np.r_[frames[0], frames[breaks + 1]], np.r_[frames[breaks], frames[-1]]
            lanes.append({"track": int(track_id), "kind": int(self.table[rows[0], 0]),
                          "runs": [[int(a), int(b)] for a, b in zip(starts, ends)]})
        limit = np.array([thresholds.get(int(k), 1.0) for k in self.table[:, 0]], np.float32) if len(self.table) \
            else np.zeros(0, np.float32)
        scores = self.table[:, 5]
        near = (scores < limit) & (scores >= limit - NEAR) & (self.track == 0)
        return {"frames": self.frames, "fps": (self.header.video or {}).get("fps"), "lanes": lanes,
                "marks": sorted({int(f) for f in self.frame[near]})}
