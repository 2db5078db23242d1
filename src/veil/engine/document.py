"""Detections documents: what the detectors found in one file, kept so that a person can review it and the
output can be rendered again (another threshold, mask or style, reviewer edits) without any detector.

The format (version 2, `docs/detections.md`) is gzip-compressed JSON lines, written and read streaming:

* line 1, the header: `{"format": "veil-detections", "version": 2, "media": "image"|"video", "width", "height",
  "floor": {"faces": f, "plates": f}, "config": {model_config of the detection run}, "video": {"fps",
  "stride", "scan", "frames"} | null}`. Every candidate scoring at or above `floor` (calibrated) is kept.
* one line per frame (one for an image): `{"i": index, "pts": seconds|null, "ran": bool, "c": [[kind, x1, y1,
  x2, y2, score], ...], "lm": {"n": [10 floats]}, "t": [track, ...]}`; `ran` is false where the video's
  detector skipped the frame (the tracker bridges it); candidate `n` of frame `i` has the id `"i.n"`; `lm`
  holds face landmarks; `t` (a video, version 2) the track of each candidate as a render at the document's own
  config numbers them (0: none; absent: none on this frame), an index for the review pages. Version 1 has
  no `t`: its tracks are found by running the tracker over the document (`veil.engine.render.run_tracker`).
* edit lines, appended later as gzip members of their own (the candidates are never rewritten):
  `{"edit": {"op": ..., "by": who, "at": ISO time, ...}}`, see `Edit`.
"""

from __future__ import annotations

import gc
import gzip
import json
import re
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from .detections import FACE, PLATE, Detections

FORMAT, VERSION = "veil-detections", 2
READS = (1, 2)  # version 1: no track numbers (`t`)
KIND_OF = {"face": FACE, "plate": PLATE}
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Header:
    media: str
    width: int
    height: int
    floor: dict[str, float]  # "faces"/"plates" -> calibrated score down to which every candidate is kept
    config: dict[str, Any]  # the model_config the detection ran with
    video: dict[str, Any] | None = None  # fps, stride, scan, frames
    version: int = VERSION  # of the document read; a writer writes the current one

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "media": self.media,
            "width": self.width,
            "height": self.height,
            "floor": self.floor,
            "config": self.config,
            "video": self.video,
        }


@dataclass
class Frame:
    index: int
    pts: float | None
    ran: bool  # False: the detector did not run on this frame
    candidates: Detections  # every candidate, in id order ("index.n" for row n)

    def ids(self) -> list[str]:
        return [f"{self.index}.{n}" for n in range(len(self.candidates))]


# ----------------------------------------------------------------------------- edits
class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lax: JSON object keys are text ("10")
    by: str = Field("", max_length=200, description="Who made the edit.")
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class AddBox(_Edit):
    """A region the detectors missed: one box (an image: frame 0), or boxes on two or more frames of a video,
    covering every frame between them (linearly interpolated)."""

    op: Literal["add"]
    kind: Literal["face", "plate"]
    frames: dict[int, tuple[float, float, float, float]] = Field(..., min_length=1)

    @field_validator("frames")
    @classmethod
    def _boxes(cls, frames: dict) -> dict:
        for index, (x1, y1, x2, y2) in frames.items():
            if index < 0 or not (x2 > x1 and y2 > y1):
                raise ValueError(f"frame {index}: a box is [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        return dict(sorted(frames.items()))


class RemoveCandidates(_Edit):
    """Candidates that are not faces or plates: never drawn, whatever the threshold."""

    op: Literal["remove"]
    ids: list[str] = Field(..., min_length=1)


class KeepCandidates(_Edit):
    """Candidates below the threshold that are real: drawn (and tracked) as if certain."""

    op: Literal["keep"]
    ids: list[str] = Field(..., min_length=1)


class RemoveTrack(_Edit):
    """Every candidate of a track (numbered as a render at the document's own config numbers them)."""

    op: Literal["remove_track"]
    track: int = Field(..., ge=1)


Edit = Annotated[AddBox | RemoveCandidates | KeepCandidates | RemoveTrack, Field(discriminator="op")]
EDITS = TypeAdapter(list[Edit])


# ----------------------------------------------------------------------------- writing
class DocumentWriter:
    """Streams a document to `path` (gzip): the header now, then `frame(...)` in frame order, then `close()`."""

    def __init__(self, path: Path, header: Header) -> None:
        self._tracks = TrackNumbers(header) if header.media == "video" else None
        self._file = gzip.open(Path(path), "wt", encoding="utf-8", compresslevel=6)
        self._line(header.to_json())

    def frame(self, index: int, pts: float | None, candidates: Detections | None) -> None:
        rows, marks = _rows(candidates if candidates is not None else Detections())
        line: dict[str, Any] = {"i": index, "pts": pts, "ran": candidates is not None, "c": rows}
        if marks:
            line["lm"] = marks
        if self._tracks is not None and rows:
            tracks = self._tracks.frame(index, candidates is not None, _detections(rows, marks))
            if any(tracks):
                line["t"] = tracks
        self._line(line)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DocumentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, value: dict) -> None:
        self._file.write(json.dumps(value, separators=(",", ":")) + "\n")


class TrackNumbers:
    """The track of each candidate of a video, as a render at the document's own config numbers them
    (`veil.engine.render.run_tracker` runs the same tracker over a whole document): fed frame by frame,
    as the document is written. A candidate's track is decided in its own frame, so each frame's numbers are
    final at once."""

    def __init__(self, header: Header) -> None:
        from .config import ModelConfig
        from .tracking import Tracker, TrackingParams
        from .video_detect import LOW_SCORE_MARGIN

        config, video = ModelConfig(**header.config), header.video or {}
        self._tracked = [k for k, on in ((FACE, config.face_track), (PLATE, config.lp_track)) if on]
        self._tracker = Tracker(
            TrackingParams.for_rate(float(video.get("fps") or 30.0), video.get("stride", 1), video.get("scan", 1)),
            {FACE: config.blur_threshold, PLATE: config.lp_threshold},
        )
        self._low = {FACE: config.blur_threshold - LOW_SCORE_MARGIN, PLATE: config.lp_threshold - LOW_SCORE_MARGIN}

    def frame(self, index: int, ran: bool, dets: Detections) -> list[int]:
        """Frame `index`'s candidates (as the document stores them): the track of each, 0 for none."""
        numbers = [0] * len(dets)
        if not ran or not len(dets):
            return numbers
        keep = np.zeros(len(dets), bool)
        for kind, low in self._low.items():  # what the tracker is given: the detector's low-score stage
            keep |= (dets.kinds == kind) & (dets.scores >= max(0.0, low) - 1e-6)
        rows = np.flatnonzero(keep & np.isin(dets.kinds, self._tracked))
        self._tracker.update(index, dets[rows])
        boxes = dets.xyxy[rows]
        for track in self._tracker.active:
            if track.frames and track.frames[-1] == index:  # it took a candidate of this frame
                for n in np.flatnonzero((boxes == track.boxes[-1]).all(axis=1)):
                    if not numbers[rows[n]]:
                        numbers[rows[n]] = track.id
                        break
        return numbers


def append_edits(path: Path, edits: list[Edit]) -> None:
    """Record edits in the document: a gzip member of their own, appended (the candidates stay as written)."""
    with gzip.open(Path(path), "at", encoding="utf-8") as f:
        for edit in edits:
            f.write(json.dumps({"edit": edit.model_dump()}, separators=(",", ":")) + "\n")


# ----------------------------------------------------------------------------- reading
def read_header(path: Path) -> Header:
    with gzip.open(Path(path), "rt", encoding="utf-8") as f:
        return parse_header(f.readline(), path)


def iter_frames(path: Path) -> Generator[Frame, None, None]:
    """The document's frames in order, one line at a time (bounded memory)."""
    with gzip.open(Path(path), "rt", encoding="utf-8") as f:
        parse_header(f.readline(), path)
        for line in f:
            data = json.loads(line)
            if "i" in data:
                yield _frame(data)


def read_edits(path: Path) -> list[Edit]:
    edits = []
    with gzip.open(Path(path), "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith('{"edit"'):
                edits.append(json.loads(line)["edit"])
    return EDITS.validate_python(edits)


def parse_header(line: str, path: Path | str) -> Header:
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{Path(path).name}: not a Veil detections document")
    if data.get("version") not in READS:
        raise ValueError(
            f"{Path(path).name}: detections document version {data.get('version')} (this Veil "
            f"reads versions {READS[0]} to {READS[-1]})"
        )
    return Header(
        data["media"], data["width"], data["height"], data["floor"], data["config"], data.get("video"), data["version"]
    )


@dataclass
class Arrays:
    """A document's frames and candidates as arrays (`read_arrays`), candidates in id order."""

    header: Header
    pts: np.ndarray  # a frame's time in seconds (NaN: none)
    ran: np.ndarray  # whether a detector ran on the frame
    counts: np.ndarray  # candidates a frame: candidate n of frame i is row sum(counts[:i]) + n
    table: np.ndarray  # rows [kind, x1, y1, x2, y2, score] (float32)
    tracks: np.ndarray  # each candidate's `t` (0: none, and everywhere in a version 1 document)
    edits: list[dict]  # as recorded (`EDITS` validates them)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame i, n) of each candidate row: its id is "i.n"."""
        frame = np.repeat(np.arange(len(self.counts), dtype=np.int32), self.counts)
        n = np.arange(len(frame)) - np.repeat(np.cumsum(self.counts) - self.counts, self.counts)
        return frame, n


def read_arrays(path: Path) -> Arrays:
    """The whole document at once, read in blocks (bounded memory): half a CPU second for an hour of 1080p30
    with three candidates a frame, less than half of what `iter_frames` takes."""
    with gzip.open(Path(path), "rb") as f:
        header = parse_header(f.readline().decode("utf-8"), path)
        return Arrays(header, *_read(f))


def _read(f, block: int = 1 << 24) -> tuple:
    """`_scan` of the lines of `f` (after the header), block by block."""
    parts, rest = [], b""
    collecting = gc.isenabled()
    gc.disable()  # hundreds of thousands of short-lived strings: a collection pass would look at each
    try:
        while data := f.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut:
                parts.append(_scan(data[:cut].decode("utf-8")))
            rest = data[cut:]
        if rest:
            parts.append(_scan(rest.decode("utf-8")))
    finally:
        if collecting:
            gc.enable()
    if not parts:
        parts.append(_scan(""))
    pts, ran, counts, rows, track, edits = zip(*parts)
    return (
        np.concatenate(pts),
        np.concatenate(ran),
        np.concatenate(counts),
        np.concatenate(rows),
        np.concatenate(track),
        [e for some in edits for e in some],
    )


# a frame line as `DocumentWriter` writes it: index, pts, ran, candidates, landmarks (skipped), tracks
_LINE = re.compile(
    r'^\{"i":(\d+),"pts":([^,]*),"ran":(true|false),"c":\[((?:\[[^\]]*\],?)*)\]'
    r'(?:,"lm":\{[^}]*\})?(?:,"t":\[([^\]]*)\])?\}$',
    re.MULTILINE,
)


def _scan(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """(pts, ran, candidates per frame, candidate rows, their tracks, edits) of a document's lines after the
    header, frames in frame order. The frame lines `DocumentWriter` writes are matched by one regular
    expression and their numbers read by NumPy in one go (a JSON parse of every line takes five times as long
    for an hour of video); a document with lines of another shape is parsed as JSON. No `t` (version 1):
    tracks 0."""
    found = _LINE.findall(text)
    edits = (
        [json.loads(line)["edit"] for line in re.findall(r'^\{"edit".*$', text, re.MULTILINE)]
        if '{"edit"' in text
        else []
    )
    lines = text.count("\n") + (not text.endswith("\n")) - len(edits)
    if len(found) != lines:  # another writer's lines
        found = [
            (
                str(d["i"]),
                json.dumps(d["pts"]),
                json.dumps(d["ran"]),
                json.dumps(d["c"])[1:-1],
                ",".join(map(str, d.get("t") or [])),
            )
            for d in map(json.loads, text.splitlines())
            if "i" in d
        ]
    _, when, did, cands, those = zip(*found) if found else ((),) * 5
    counts = np.array([c.count("[") for c in cands], np.int64)
    values = (
        np.fromstring(",".join(c for c in cands if c).translate({91: 32, 93: 32}), sep=",")
        if counts.any()
        else np.zeros(0)
    )
    track = np.zeros(int(counts.sum()), np.int32)
    with_tracks = [n for n, t in enumerate(those) if t]
    if with_tracks:  # the rows of the frames with tracks, in order
        first, sizes = (np.cumsum(counts) - counts)[with_tracks], counts[with_tracks]
        rows = np.repeat(first - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        track[rows] = np.fromstring(",".join(those[n] for n in with_tracks), sep=",", dtype=np.int64)
    pts = np.fromstring(",".join(when).replace("null", "nan"), sep=",") if when else np.zeros(0)
    return pts, np.array(did, dtype="U5") == "true", counts, values.astype(np.float32).reshape(-1, 6), track, edits


def _frame(data: dict) -> Frame:
    return Frame(data["i"], data["pts"], data["ran"], _detections(data["c"], data.get("lm") or {}))


def normalized(candidates: Detections) -> Detections:
    """`candidates` as a document stores them (boxes to 0.01 px, scores to 1e-5): what the pipeline draws
    from, so that a render from the document draws exactly the same."""
    return _detections(*_rows(candidates))


def _rows(dets: Detections) -> tuple[list[list[float]], dict[str, list[float]]]:
    rows, marks = [], {}
    for n in range(len(dets)):
        x1, y1, x2, y2 = (round(float(v), 2) for v in dets.xyxy[n])
        rows.append([int(dets.kinds[n]), x1, y1, x2, y2, round(float(dets.scores[n]), 5)])
        if dets.landmarks is not None and np.isfinite(dets.landmarks[n]).all():
            marks[str(n)] = [round(float(v), 2) for v in dets.landmarks[n]]
    return rows, marks


def _detections(rows: list, marks: dict[str, list[float]]) -> Detections:
    table = np.asarray(rows, np.float64).reshape(-1, 6)
    landmarks = None
    if marks:
        landmarks = np.full((len(table), 10), np.nan, np.float32)
        for n, values in marks.items():
            landmarks[int(n)] = values
    return Detections(table[:, 1:5], table[:, 5], table[:, 0].astype(np.int8), landmarks=landmarks)


# ----------------------------------------------------------------------------- applying edits
@dataclass
class Review:
    """A document's edits, resolved for rendering frame by frame."""

    removed: set[str]
    kept: set[str]
    added: list[AddBox]

    @classmethod
    def of(cls, edits: list[Edit], track_ids: dict[int, set[str]] | None = None) -> Review:
        removed, kept, added = set(), set(), []
        for edit in edits:
            if isinstance(edit, RemoveCandidates):
                removed |= set(edit.ids)
            elif isinstance(edit, KeepCandidates):
                kept |= set(edit.ids)
            elif isinstance(edit, AddBox):
                added.append(edit)
            elif isinstance(edit, RemoveTrack):
                removed |= (track_ids or {}).get(edit.track, set())
        return cls(removed, kept - removed, added)

    def candidates(self, frame: Frame) -> Detections:
        """The frame's candidates without the removed ones; kept ones scored 1.0."""
        ids = frame.ids()
        dets = frame.candidates
        if not (self.removed or self.kept) or not len(dets):
            return dets
        keep = np.array([i not in self.removed for i in ids], bool)
        scores = dets.scores.copy()
        scores[[n for n, i in enumerate(ids) if i in self.kept]] = 1.0
        dets = Detections(dets.xyxy, scores, dets.kinds, landmarks=dets.landmarks)
        return dets[keep]

    def boxes(self, index: int) -> Detections:
        """Reviewer boxes on frame `index` (a span's boxes interpolated between its frames)."""
        boxes, kinds = [], []
        for edit in self.added:
            box = _span_box(edit.frames, index)
            if box is not None:
                boxes.append(box)
                kinds.append(KIND_OF[edit.kind])
        return Detections(np.array(boxes), np.ones(len(boxes)), np.array(kinds), np.full(len(boxes), -1, np.int64))


def _span_box(frames: dict[int, Box], index: int) -> Box | None:
    keys = list(frames)
    if index in frames:
        return frames[index]
    if len(keys) < 2 or not keys[0] < index < keys[-1]:
        return None
    after = next(k for k in keys if k > index)
    before = max(k for k in keys if k < index)
    t = (index - before) / (after - before)
    (a0, a1, a2, a3), (b0, b1, b2, b3) = frames[before], frames[after]
    return ((1 - t) * a0 + t * b0, (1 - t) * a1 + t * b1, (1 - t) * a2 + t * b2, (1 - t) * a3 + t * b3)
