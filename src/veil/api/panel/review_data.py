"""What the review pages read, kept close at hand: local copies of a task's input and detections document
(bounded), and a document's candidates as arrays (`DocIndex`: a photo's candidates; a video's frames, tracks
and the places to look), built once per document and kept for the next requests (bounded too)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...engine.document import EDITS, Header, read_arrays
from ...engine.render import run_tracker

NEAR = 0.2  # "just below the threshold": within this of it (the per-file report's below_threshold)
MAX_LANES = 300  # the timeline's lanes: the longest tracks (a synthetic worst case has tens of thousands)


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

    def member(self, store, container: str, blob: str, name: str) -> Path:
        """One file of an archive blob, extracted (with the archive checks of `veil.jobs.archive`)."""

        def extract() -> Path:
            from ...jobs.archive import iter_member_files

            archive = self.path(store, container, blob)
            for member, file in iter_member_files(archive, work_dir=self._dir):
                if member == name:
                    dst = self._dir / f"{len(os.listdir(self._dir))}-member{file.suffix}"
                    shutil.copyfile(file, dst)
                    return dst
            raise FileNotFoundError(f"{name} is not in the archive")

        return self._files.get_or_make((container, blob, name), extract)

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
    x2, y2, score], `track` (0: none; a video's tracks as a render at the document's config numbers them).

    A version 2 document holds each candidate's track (written with it): its timeline, lanes included, is
    ready as soon as its lines are read (well under a second for an hour of 1080p30). A version 1 document
    has none: the tracker runs over it once, in a thread of its own (minutes for an hour of video), and the
    timeline gets its lanes once they are ready (`tracks_ready`); the pages keep the index for later requests."""

    header: Header
    frames: int
    pts: np.ndarray
    ran: np.ndarray
    frame: np.ndarray
    n: np.ndarray
    table: np.ndarray
    track: np.ndarray
    edits: list = field(default_factory=list)
    lanes: list = field(default_factory=list)
    tracks_ready: bool = True

    @classmethod
    def load(cls, doc: Path, tracks_in_background: bool = True) -> DocIndex:
        read = read_arrays(doc)
        header, counts, rows, track = read.header, read.counts, read.table, read.tracks
        frame, n = read.positions()
        n = n.astype(np.int16)
        index = cls(
            header,
            len(counts),
            read.pts,
            read.ran,
            frame,
            n,
            rows,
            track,
            [e.model_dump() for e in EDITS.validate_python(read.edits)],
        )
        if header.media != "video" or not len(rows):
            return index
        if header.version >= 2:
            index.lanes = _lanes(frame, track, rows[:, 0])
        else:
            index.tracks_ready = False
            if tracks_in_background:
                threading.Thread(target=index._find_tracks, args=(doc,), daemon=True, name="veil-tracks").start()
            else:
                index._find_tracks(doc)
        return index

    def _find_tracks(self, doc: Path) -> None:
        """A version 1 document's tracks: the tracker run over it (`run_tracker`)."""
        first = np.r_[0, np.cumsum(np.bincount(self.frame, minlength=self.frames))]  # row of "i.0"
        track = np.zeros(len(self.frame), np.int32)
        for track_id, ids in run_tracker(doc).items():
            rows = [first[int(i)] + int(k) for i, k in (c.split(".") for c in ids)]
            track[rows] = track_id
        self.track, self.lanes = track, _lanes(self.frame, track, self.table[:, 0])
        self.tracks_ready = True

    def candidates(self, start: int = 0, stop: int | None = None) -> list[list]:
        """[id, kind, x1, y1, x2, y2, score, track] of the frames start..stop-1."""
        lo, hi = np.searchsorted(self.frame, [start, self.frames if stop is None else stop])
        return [
            [
                f"{self.frame[m]}.{self.n[m]}",
                int(self.table[m, 0]),
                *(round(float(v), 1) for v in self.table[m, 1:5]),
                round(float(self.table[m, 5]), 3),
                int(self.track[m]),
            ]
            for m in range(lo, hi)
        ]

    def timeline(self, thresholds: dict[int, float]) -> dict:
        """A video's lanes (one per track, the MAX_LANES longest: kind, the runs of frames with a candidate of
        its own; the gaps between them are bridged) and the places to look: frames with a candidate within
        NEAR below the threshold of its kind that no track draws."""
        limit = (
            np.array([thresholds.get(int(k), 1.0) for k in (0, 1)], np.float32)[self.table[:, 0].astype(np.intp)]
            if len(self.table)
            else np.zeros(0, np.float32)
        )
        scores = self.table[:, 5]
        near = (scores < limit) & (scores >= limit - NEAR) & (self.track == 0)
        return {
            "frames": self.frames,
            "fps": (self.header.video or {}).get("fps"),
            "lanes": self.lanes,
            "tracks_ready": self.tracks_ready,
            "marks": np.unique(self.frame[near]).tolist(),
        }


def _lanes(frame: np.ndarray, track: np.ndarray, kind: np.ndarray) -> list[dict]:
    """The MAX_LANES longest tracks (first to last frame), in order of their first frame: {"track", "kind",
    "runs": [[first, last], ...] of consecutive frames with a candidate of the track's own}."""
    order = np.lexsort((frame, track))
    order = order[track[order] > 0]
    if not len(order):
        return []
    tracks, frames = track[order], frame[order]
    starts = np.flatnonzero(np.r_[True, tracks[1:] != tracks[:-1]])  # each track's first row in `order`
    ends = np.r_[starts[1:], len(order)] - 1
    runs = np.flatnonzero(np.r_[True, (tracks[1:] != tracks[:-1]) | (np.diff(frames) > 1)])
    run_ends = np.r_[runs[1:], len(order)] - 1
    longest = np.argsort(frames[starts] - frames[ends], kind="stable")[:MAX_LANES]
    lanes = []
    for t in sorted(longest.tolist(), key=lambda t: frames[starts[t]]):
        a, b = np.searchsorted(runs, [starts[t], ends[t] + 1])
        lanes.append(
            {
                "track": int(tracks[starts[t]]),
                "kind": int(kind[order[starts[t]]]),
                "runs": np.c_[frames[runs[a:b]], frames[run_ends[a:b]]].tolist(),
            }
        )
    return lanes
