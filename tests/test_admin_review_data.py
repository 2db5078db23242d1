"""The review pages' data (issue 21): frames decoded on demand are the frames asked for, whatever the order
of the requests (steps, jumps, seeks back), with bounded caches; a document's index gives each frame's
candidates, a track per lane and the places to look at a threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from veil.api.panel.frames import FrameServer
from veil.api.panel.review_data import Bounded, DocIndex
from veil.engine.detections import Detections
from veil.engine.document import DocumentWriter, Header, iter_frames


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
            picture[:, i:i + 6] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            pts.append(frame.time)
    return path, np.array(pts, np.float64)


def _bar(jpeg: bytes) -> int:
    columns = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32).mean(axis=0)
    return int(np.flatnonzero(columns > 128)[0])


def test_frames_on_demand_are_the_frames_asked_for(clip):
    path, pts = clip
    server = FrameServer(videos=1, frames=8)
    order = [0, 1, 2, 3, 13, 60, 59, 119, 5, 100, 101, 75, 49, 50, 51]  # steps, jumps, seeks back and forth
    for index in order:
        assert _bar(server.jpeg(path, pts, index, side=160)) == index
    assert len(server._jpegs) == 8  # bounded
    with pytest.raises(IndexError):
        FrameServer().jpeg(path, np.append(pts, pts[-1] + 0.04), 120)


def test_bounded_keeps_the_most_recent_and_builds_once():
    dropped, built = [], []
    cache = Bounded(2, on_drop=dropped.append)
    for key in ("a", "b", "a", "c"):
        cache.get_or_make(key, lambda k=key: built.append(k) or k.upper())
    assert list(cache) == ["a", "c"] and dropped == ["B"] and built == ["a", "b", "c"]


def test_a_documents_index(tmp_path):
    doc = tmp_path / "doc.gz"
    header = Header("video", 320, 240, {"faces": 0.3, "plates": 0.3},
                    {"blur_threshold": 0.5, "lp_threshold": 0.5, "face_track": True, "lp_track": True},
                    {"fps": 10.0, "stride": 1, "scan": 1})
    with DocumentWriter(doc, header) as writer:
        for i in range(30):  # a face walking right on every frame; a plate-like blip at 0.42 on frame 12
            boxes, scores, kinds = [[10 + i, 20, 50 + i, 70]], [0.9], [0]
            if i == 12:
                boxes, scores, kinds = boxes + [[200, 150, 260, 170]], scores + [0.42], kinds + [1]
            writer.frame(i, i / 10, Detections(np.array(boxes, float), np.array(scores), np.array(kinds)))
    index = DocIndex.load(doc, tracks_in_background=False)
    assert index.frames == 30 and len(index.table) == 31
    read = [(f.index, n, *f.candidates.xyxy[n], f.candidates.scores[n]) for f in iter_frames(doc)
            for n in range(len(f.candidates))]  # the engine's reader gives the same candidates
    assert np.allclose([(f, n, *row[1:]) for f, n, row in zip(index.frame, index.n, index.table)], read, atol=1e-3)
    assert np.allclose(index.pts, np.arange(30) / 10) and index.ran.all()
    rows = index.candidates(12, 13)
    assert [r[0] for r in rows] == ["12.0", "12.1"] and rows[1][1] == 1 and rows[1][6] == 0.42
    view = index.timeline({0: 0.5, 1: 0.5})
    assert view["lanes"] == [{"track": 1, "kind": 0, "runs": [[0, 29]]}]
    assert view["marks"] == [12]  # within 0.2 below the plate threshold, in no track
    assert index.timeline({0: 0.5, 1: 0.7})["marks"] == []  # 0.42 is more than 0.2 below 0.7
