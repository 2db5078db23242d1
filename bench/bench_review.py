"""The review pages' responsiveness (issue 21): the video timeline from a one-hour document, and frames at
review resolution served on demand.

    python bench/bench_review.py CLIP [--hour-candidates 3]

Prints, for CLIP (the 1080p bench clip: `bench/make_clip.py`), the time to serve a frame at review resolution
(`veil.api.panel.frames.FrameServer`, what GET .../before.jpg?frame=N runs): the first (the decoder opens), the
next frames in order (a reviewer stepping with the arrow keys), jumps of 10 frames, and random far frames
(a seek to the keyframe before, then decoding up to the frame); and for a one-hour 1080p30 document (108,000
frames, `--hour-candidates` synthetic candidates a frame, written as `bench_render.py` writes it): the time to
read it into the pages' index (once per document; the pages keep it) and answer the first timeline (the
places to look; the lanes follow once the tracker, in a thread, has run over every frame), then the timeline for
a threshold (every slider move) and a window of 200 frames' candidates. Medians and maxima, in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from bench_render import _HOUR
from bench_video import cpu_line


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)})"


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def frames(clip: Path) -> None:
    from veil.api.panel.frames import FrameServer

    with av.open(str(clip)) as c:  # the pts the clip's detections document holds
        pts = np.array([f.time for f in c.decode(video=0)], np.float64)
    n = len(pts)
    server = FrameServer()
    first = _timed(lambda: server.jpeg(clip, pts, 0))
    steps = [_timed(lambda i=i: server.jpeg(clip, pts, i)) for i in range(1, 31)]
    jumps = [_timed(lambda i=i: server.jpeg(clip, pts, i)) for i in range(40, min(n, 240), 10)]
    rng = random.Random(1)
    far = [_timed(lambda i=i: server.jpeg(clip, pts, i)) for i in rng.sample(range(n), 20)]
    print(f"frames of {clip.name} ({n} frames): first {first * 1000:.0f} ms; next frame {_ms(steps)}; "
          f"10 frames on {_ms(jumps)}; random frame {_ms(far)}")


def timeline(work: Path, per: int) -> None:
    from veil.api.panel.review_data import DocIndex

    doc = work / "hour.detections.gz"
    subprocess.run([sys.executable, "-c", _HOUR, str(doc), str(per), "write"], check=True, capture_output=True)
    start = time.perf_counter()
    index = DocIndex.load(doc)  # the lines; its tracks are found in a thread
    built = time.perf_counter() - start
    first = _timed(lambda: index.timeline({0: 0.5, 1: 0.5}))
    while not index.tracks_ready:
        time.sleep(0.1)
    tracked = time.perf_counter() - start
    answers = [_timed(lambda t=t: index.timeline({0: t, 1: t})) for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    page = [_timed(lambda s=s: index.candidates(s, s + 200)) for s in range(0, 108_000, 10_800)]
    print(f"one-hour 1080p30 document, {per} candidates a frame ({doc.stat().st_size / 1e6:.1f} MB): read in "
          f"{built:.2f} s, first timeline (marks, lanes pending) {first * 1000:.0f} ms later; tracks ready after "
          f"{tracked:.0f} s ({len(index.lanes)} lanes shown); then the timeline at a threshold {_ms(answers)}; "
          f"200 frames' candidates {_ms(page)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("--hour-candidates", type=int, default=3)
    args = ap.parse_args()
    print(cpu_line())
    frames(args.clip)
    with tempfile.TemporaryDirectory() as tmp:
        timeline(Path(tmp), args.hour_candidates)


if __name__ == "__main__":
    main()
