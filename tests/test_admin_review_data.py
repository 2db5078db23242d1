"""The review pages' data (issue 21): frames decoded on demand are the frames asked for, whatever the order
of the requests (steps, jumps, seeks back), with bounded caches; a document's index gives each frame's
candidates, a track per lane and the places to look at a threshold."""

from __future__ import annotations

import gzip
import io
import time

import numpy as np
import pytest
from PIL import Image

from veil.api.panel.frames import FrameServer
from veil.api.panel.review_data import Bounded, DocIndex
from veil.engine import review_copy
from veil.engine.detections import Detections
from veil.engine.document import DocumentWriter, Header, _read, iter_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """120 frames, keyframes every 50, B-frames: frame i shows a white bar from column i."""
    import av

    path = tmp_path_factory.mktemp("frames") / "clip.mp4"
    pts = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128 + 32, 96, "yuv420p"
        stream.options = {"g": "50", "bf": "3", "crf": "10"}
        for i in range(120):
            picture = np.zeros((96, 160, 3), np.uint8)
            picture[:, i : i + 6] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            pts.append(frame.time)
    return path, np.array(pts, np.float64)


def _bar(jpeg: bytes) -> int:
    columns = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32).mean(axis=0)
    return int(np.flatnonzero(columns > 128)[0])


@pytest.mark.parametrize("copy", [False, True], ids=["from the video", "from its review copy"])
def test_frames_on_demand_are_the_frames_asked_for(clip, copy, monkeypatch):
    path, pts = clip
    monkeypatch.setattr(review_copy, "COPY_CHUNK", 50)  # the copy in three files: 0-49, 50-99, 100-119
    server = FrameServer(videos=1, frames=8, review_copies=copy)
    if copy:
        made = server.review_copy(path, len(pts))
        assert made.done.wait(60) and made.ready == 120 and len(list(made.dir.glob("*.mp4"))) == 3
    order = [0, 1, 2, 3, 13, 60, 59, 119, 5, 100, 101, 75, 49, 50, 51, 99, 98, 97]  # steps, jumps, seeks back
    for index in order:
        assert _bar(server.jpeg(path, pts, index, side=160)) == index
    assert len(server._jpegs) == 8  # bounded
    assert (str(path) in server._decoders) != copy  # the copy served them all, or the video did
    with pytest.raises(IndexError):
        server.jpeg(path, np.append(pts, pts[-1] + 0.04), 120)


def test_frames_from_a_stored_review_copy(clip, monkeypatch, tmp_path):
    """The copy a review-mode job stores (written as its frames are decoded) serves every frame; the video
    itself is never opened and no copy is made again."""
    import av

    path, pts = clip
    monkeypatch.setattr(review_copy, "COPY_CHUNK", 50)
    told = []
    writer = review_copy.ReviewCopyWriter(tmp_path, on_part=lambda n, p, frames: told.append((n, frames)))
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            writer.add(frame)
    parts = writer.finish()
    assert [p.name for p in parts] == ["0.mp4", "1.mp4", "2.mp4"] and told == [(0, 50), (1, 100), (2, 120)]
    assert not list(tmp_path.glob("*.part.mp4"))
    server = FrameServer(videos=1, frames=4)
    for index in [0, 119, 60, 59, 5, 100, 49, 50]:
        assert _bar(server.jpeg(path, pts, index, side=160, stored=parts.__getitem__)) == index
    assert str(path) not in server._decoders and not server._proxies


def test_frames_asked_for_at_once_from_more_files_than_open_decoders(clip, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    path, pts = clip
    monkeypatch.setattr(review_copy, "COPY_CHUNK", 30)  # four files, two decoders open at most
    server = FrameServer(videos=0, frames=1, copies=1)
    assert server.review_copy(path, len(pts)).done.wait(60)
    asked = [int(i) for i in np.random.default_rng(5).integers(0, 120, 48)]
    with ThreadPoolExecutor(4) as pool:  # a decoder dropped while another request uses it is opened again
        bars = list(pool.map(lambda i: _bar(server.jpeg(path, pts, i, side=160)), asked))
    assert bars == asked and len(server._decoders) == 2


def test_a_review_copy_only_where_keyframes_lie_far_apart(clip, monkeypatch):
    path, pts = clip
    server = FrameServer()
    assert _bar(server.jpeg(path, pts, 5, side=160)) == 5
    assert not server._proxies  # a keyframe every 50 frames: quick enough from the video itself
    monkeypatch.setattr(review_copy, "COPY_ABOVE", 40)
    other = FrameServer()
    assert _bar(other.jpeg(path, pts, 5, side=160)) == 5 and str(path) in other._proxies
    assert other._proxies[str(path)].done.wait(60)


def test_bounded_keeps_the_most_recent_and_builds_once():
    dropped, built = [], []
    cache = Bounded(2, on_drop=dropped.append)
    for key in ("a", "b", "a", "c"):
        cache.get_or_make(key, lambda k=key: built.append(k) or k.upper())
    assert list(cache) == ["a", "c"] and dropped == ["B"] and built == ["a", "b", "c"]


def test_a_documents_index(tmp_path):
    doc = tmp_path / "doc.gz"
    header = Header(
        "video",
        320,
        240,
        {"faces": 0.3, "plates": 0.3},
        {"blur_threshold": 0.5, "lp_threshold": 0.5, "face_track": True, "lp_track": True},
        {"fps": 10.0, "stride": 1, "scan": 1},
    )
    with DocumentWriter(doc, header) as writer:
        for i in range(30):  # a face walking right on every frame; a plate-like blip at 0.42 on frame 12
            boxes, scores, kinds = [[10 + i, 20, 50 + i, 70]], [0.9], [0]
            if i == 12:
                boxes, scores, kinds = boxes + [[200, 150, 260, 170]], scores + [0.42], kinds + [1]
            writer.frame(i, i / 10, Detections(np.array(boxes, float), np.array(scores), np.array(kinds)))
    index = DocIndex.load(doc, tracks_in_background=False)
    assert index.frames == 30 and len(index.table) == 31
    read = [
        (f.index, n, *f.candidates.xyxy[n], f.candidates.scores[n])
        for f in iter_frames(doc)
        for n in range(len(f.candidates))
    ]  # the engine's reader gives the same candidates
    assert np.allclose([(f, n, *row[1:]) for f, n, row in zip(index.frame, index.n, index.table)], read, atol=1e-3)
    assert np.allclose(index.pts, np.arange(30) / 10) and index.ran.all()
    rows = index.candidates(12, 13)
    assert [r[0] for r in rows] == ["12.0", "12.1"] and rows[1][1] == 1 and rows[1][6] == 0.42
    view = index.timeline({0: 0.5, 1: 0.5})
    assert view["lanes"] == [{"track": 1, "kind": 0, "runs": [[0, 29]]}]
    assert view["marks"] == [12]  # within 0.2 below the plate threshold, in no track
    assert index.timeline({0: 0.5, 1: 0.7})["marks"] == []  # 0.42 is more than 0.2 below 0.7


def _walkers(path, frames: int = 160, version_one: bool = False, sort_keys: bool = False):
    """A video document of faces and plates moving about: some leave and come back, some score below the
    threshold for a while, a few frames the detector skipped, noise that starts no track."""
    rng = np.random.default_rng(3)
    header = Header(
        "video",
        640,
        360,
        {"faces": 0.3, "plates": 0.3},
        {"blur_threshold": 0.5, "lp_threshold": 0.5, "face_track": True, "lp_track": True},
        {"fps": 25.0, "stride": 1, "scan": 1},
    )
    start = rng.uniform(0, 500, (6, 2))
    step = rng.uniform(-3, 3, (6, 2))
    with DocumentWriter(path, header) as writer:
        for i in range(frames):
            boxes, scores, kinds = [], [], []
            for k in range(6):
                if (i // 20 + k) % 4 == 3:  # away for 20 frames in 80
                    continue
                x, y = start[k] + step[k] * i
                boxes.append([x, y, x + 30 + 4 * k, y + 24 + 2 * k])
                scores.append(0.35 if (i + 7 * k) % 30 < 6 else float(rng.uniform(0.55, 0.95)))
                kinds.append(k % 2)
            for _ in range(int(rng.integers(0, 3))):
                x, y = rng.uniform(0, 600, 2)
                boxes.append([x, y, x + 20, y + 20])
                scores.append(float(rng.uniform(0.3, 0.7)))
                kinds.append(int(rng.integers(0, 2)))
            ran = i % 9 != 4
            writer.frame(
                i,
                i / 25,
                Detections(np.array(boxes, float).reshape(-1, 4), np.array(scores), np.array(kinds)) if ran else None,
            )
    if version_one or sort_keys:  # as Veil wrote it before documents held their tracks; as another writer might
        import json

        with gzip.open(path, "rt") as f:
            lines = [json.loads(line) for line in f]
        lines[0]["version"] = 1 if version_one else 2
        with gzip.open(path, "wt") as f:
            for line in lines:
                if version_one:
                    line.pop("t", None)
                f.write(json.dumps(line, separators=(",", ":"), sort_keys=sort_keys) + "\n")


def test_a_document_holds_the_tracks_a_render_finds(tmp_path):
    from veil.engine.render import run_tracker, track_candidates

    doc = tmp_path / "doc.gz"
    _walkers(doc)
    index = DocIndex.load(doc, tracks_in_background=False)
    assert index.tracks_ready and index.header.version == 2
    written = {}
    for f, n, t in zip(index.frame, index.n, index.track):
        if t:
            written.setdefault(int(t), set()).add(f"{f}.{n}")
    found = run_tracker(doc)
    assert len(found) > 6 and written == found  # the tracker's own numbers, candidate for candidate
    assert track_candidates(doc) == found  # what remove_track takes, read from the document
    assert len(index.lanes) == len(found) and any(len(lane["runs"]) > 1 for lane in index.lanes)


def test_an_old_document_finds_its_tracks_once(tmp_path):
    new, old = tmp_path / "new.gz", tmp_path / "old.gz"
    _walkers(new)
    _walkers(old, version_one=True)
    assert [f.candidates.xyxy.tolist() for f in iter_frames(old)] == [
        f.candidates.xyxy.tolist() for f in iter_frames(new)
    ]
    was = DocIndex.load(old)  # the tracker runs in a thread; the places to look come at once
    assert was.header.version == 1 and was.timeline({0: 0.5, 1: 0.5})["marks"]
    while not was.tracks_ready:
        time.sleep(0.05)
    now = DocIndex.load(new)
    assert now.tracks_ready and (was.track == now.track).all() and was.lanes == now.lanes
    assert was.timeline({0: 0.5, 1: 0.5}) == now.timeline({0: 0.5, 1: 0.5})
    other = tmp_path / "other.gz"  # the same, its keys in another order: read as JSON
    _walkers(other, sort_keys=True)
    again = DocIndex.load(other)
    assert (again.track == now.track).all() and (again.table == now.table).all() and again.lanes == now.lanes
    assert np.array_equal(again.pts, now.pts) and (again.ran == now.ran).all() and again.frames == now.frames
    with gzip.open(new, "rb") as f:  # read in blocks that cut lines anywhere: the same arrays
        f.readline()
        pts, ran, counts, table, track, _ = _read(f, block=97)
    assert np.array_equal(pts, now.pts) and (ran == now.ran).all() and (table == now.table).all()
    assert (track == now.track).all() and len(counts) == now.frames


def test_render_edits_are_checked_against_the_documents_arrays(tmp_path):
    from veil.engine.document import EDITS, read_arrays
    from veil.jobs.review import InvalidRender, _check_edit

    doc = tmp_path / "doc.gz"
    _walkers(doc, frames=40)
    read = read_arrays(doc)
    tracks = set(np.unique(read.tracks).tolist())
    last = f"39.{read.counts[39] - 1}"

    def check(edit):
        _check_edit(EDITS.validate_python([edit])[0], ["edits", "0", 0], read.header, read.counts, tracks)

    check({"op": "remove", "ids": ["0.0", last]})
    check({"op": "remove_track", "track": max(tracks)})
    for edit, field in (
        ({"op": "remove", "ids": [f"39.{read.counts[39]}"]}, "ids"),  # one past the frame's last
        ({"op": "keep", "ids": ["40.0"]}, "ids"),
        ({"op": "keep", "ids": ["01.0"]}, "ids"),
        ({"op": "remove_track", "track": max(tracks) + 1}, "track"),
        ({"op": "add", "kind": "face", "frames": {"40": [1, 1, 9, 9]}}, "frames"),
    ):
        with pytest.raises(InvalidRender) as refused:
            check(edit)
        assert refused.value.loc[3] == field, edit
