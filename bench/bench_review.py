"""The review pages' responsiveness (issue 21): the video timeline from a one-hour document, and frames at
review resolution served on demand.

    python bench/bench_review.py CLIP [--hour-candidates 3] [--runs 5]

Frames of CLIP (the 1080p bench clip: `bench/make_clip.py`) at review resolution, what GET
.../before.jpg?frame=N runs (`veil.api.panel.frames.FrameServer`), two ways in turn, the same frames each:
from the video itself (before: a seek to the keyframe before, then decoding up to the frame) and from its
review copy (now: made once in a thread, a keyframe every 15 frames; its making is timed too). Before
that, what a review-mode job's detection pass pays for writing the copy it stores (with and without, in
turn) and the frames then served from that stored copy on a fresh server (`--only worker`). For each: the
first frame, the next frames in order (the arrow key), 10 frames on, the frames before (stepping back) and
random far frames.

The timeline of a one-hour 1080p30 document (108,000 frames, `--hour-candidates` synthetic candidates a
frame, written as `bench_render.py` writes it, its tracks with it): reading it into the pages' index and
answering the first timeline, lanes included (`--runs` times); then the timeline for a threshold (every
slider move) and a window of 200 frames' candidates; then the same document as version 1 (no tracks, as
before): its places to look at once, its lanes once the tracker has run over every frame. Medians and maxima
in milliseconds, and ratios against the "before" in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
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


def frames(clip: Path, runs: int) -> None:
    from veil.api.panel.frames import FrameServer

    with av.open(str(clip)) as c:  # the pts the clip's detections document holds
        pts = np.array([f.time for f in c.decode(video=0)], np.float64)
    n = len(pts)
    servers = {"video": FrameServer(review_copies=False), "copy": FrameServer()}  # before / now
    first = {name: _timed(lambda s=server: s.jpeg(clip, pts, 0)) for name, server in servers.items()}
    start = time.perf_counter()
    made = servers["copy"].review_copy(clip, n)
    made.done.wait()
    built = time.perf_counter() - start
    size = sum(f.stat().st_size for f in made.dir.glob("*.mp4"))
    rng = random.Random(1)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs):  # the same frames from each server, in turn
        at = rng.randrange(n - 40)
        asked = {
            "next frame": range(at + 1, at + 11),
            "10 frames on": range(at + 20, min(n, at + 40), 10),
            "frame before": range(at + 39, at + 34, -1),
            "random frame": rng.sample(range(n), 8),
        }
        for name, server in servers.items():
            server._jpegs.clear()
            server.jpeg(clip, pts, at)
            for what, indexes in asked.items():
                times.setdefault((name, what), []).extend(
                    _timed(lambda i=i, s=server: s.jpeg(clip, pts, i)) for i in indexes
                )
    print(
        f"frames of {clip.name} ({n} frames); its review copy made in {built:.1f} s ({built / n * 1000:.0f} ms a "
        f"frame, {size / 1e6:.1f} MB)"
    )
    for name, label in (("video", "from the video (before)"), ("copy", "from the review copy (now)")):
        print(
            f"  {label}: first {first[name] * 1000:.0f} ms; "
            + "; ".join(
                f"{what} {_ms(times[name, what])}"
                for what in ("next frame", "10 frames on", "frame before", "random frame")
            )
        )
    ratio = statistics.median(times["copy", "random frame"]) / statistics.median(times["video", "random frame"])
    print(f"  random frame, copy / video: {ratio:.2f}x")


def worker_copy(clip: Path, runs: int, config: dict) -> None:
    """What a review-mode job's detection pass pays for writing the review copy (`detect_document` with and
    without it, in turn), and the frames the page then serves from the stored copy."""
    from veil.api.panel.frames import FrameServer
    from veil.engine.config import ModelConfig
    from veil.engine.render import detect_document
    from veil.engine.review_copy import ReviewCopyWriter

    with av.open(str(clip)) as c:
        pts = np.array([f.time for f in c.decode(video=0)], np.float64)
    n, settings = len(pts), ModelConfig(**config)
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        work, parts = Path(tmp), []
        for run in range(runs):
            for name in ("without", "with") if run % 2 == 0 else ("with", "without"):
                folder = work / f"copy{run}-{name}"
                folder.mkdir()
                writer = ReviewCopyWriter(folder) if name == "with" else None
                start = time.perf_counter()
                detect_document(clip, work / "doc.gz", settings, review_copy=writer)
                parts = writer.finish() if writer is not None else parts
                seconds[name].append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in parts)
        rng = random.Random(2)
        asked = rng.sample(range(n), 24)
        server = FrameServer()
        first = _timed(lambda: server.jpeg(clip, pts, asked[0], stored=parts.__getitem__))
        far = [_timed(lambda i=i: server.jpeg(clip, pts, i, stored=parts.__getitem__)) for i in asked[1:]]
    without, with_copy = (statistics.median(seconds[k]) for k in ("without", "with"))
    print(
        f"review-mode detection of {clip.name} ({n} frames, {config}): {n / without:.1f} frames/s without the "
        f"review copy, {n / with_copy:.1f} with it ({with_copy / without:.2f}x the time; medians of {runs}); "
        f"the copy {size / 1e6:.1f} MB ({size * 8 / (n / 30) / 1e6:.2f} Mbit/s at 30 fps)"
    )
    print(f"  frames from the stored copy on a fresh server: first {first * 1000:.0f} ms; random frames {_ms(far)}")


def _as_version_one(doc: Path, old: Path) -> None:
    """`doc` as Veil wrote it before documents held their tracks: version 1, no "t" in the frame lines."""
    with gzip.open(doc, "rt", encoding="utf-8") as src, gzip.open(old, "wt", encoding="utf-8") as dst:
        dst.write(src.readline().replace('"version":2', '"version":1'))
        for line in src:
            dst.write(re.sub(r',"t":\[[0-9,]*\]', "", line))


def timeline(work: Path, per: int, runs: int) -> None:
    from veil.api.panel.review_data import DocIndex

    doc, old = work / "hour.detections.gz", work / "hour-v1.detections.gz"
    start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    subprocess.run([sys.executable, "-c", _HOUR, str(doc), str(per), "write"], check=True, capture_output=True)
    written = time.perf_counter() - start  # the document as detection writes it: its tracks found as it is written
    writing = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - used
    _as_version_one(doc, old)
    loads, views, cpu = [], [], []
    for _ in range(runs):  # version 2: the lines and their tracks read, the lanes built, the first timeline
        start, used = time.perf_counter(), time.process_time()
        index = DocIndex.load(doc)
        loaded = time.perf_counter() - start
        view = index.timeline({0: 0.5, 1: 0.5})
        loads.append(loaded)
        views.append(time.perf_counter() - start)
        cpu.append(time.process_time() - used)  # the CPU this process got: the figure on a busy machine
        assert index.tracks_ready and view["lanes"]
    answers = [_timed(lambda t=t: index.timeline({0: t, 1: t})) for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    page = [_timed(lambda s=s: index.candidates(s, s + 200)) for s in range(0, 108_000, 10_800)]
    start = time.perf_counter()  # version 1 (before): the tracker runs over the whole document, once
    before = DocIndex.load(old)
    first = time.perf_counter() - start
    while not before.tracks_ready:
        time.sleep(0.1)
    tracked = time.perf_counter() - start
    assert (before.track == index.track).all() and before.lanes == index.lanes
    print(
        f"one-hour 1080p30 document, {per} candidates a frame ({doc.stat().st_size / 1e6:.1f} MB, written with "
        f"its tracks in {written:.0f} s, {writing:.0f} CPU s): timeline with its {len(index.lanes)} lanes "
        f"{_ms(views)}, CPU {_ms(cpu)} (reading it {_ms(loads)}); then the timeline at a threshold "
        f"{_ms(answers)}; 200 frames' candidates {_ms(page)}"
    )
    print(
        f"the same document in version 1 (no tracks, before): places to look after {first:.2f} s, lanes after "
        f"{tracked:.0f} s (the tracker over 108,000 frames, once); lanes now / before: "
        f"{statistics.median(views) / tracked:.4f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("--hour-candidates", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="rounds of frames, loads of the hour's document")
    ap.add_argument("--detect-runs", type=int, default=2, help="review-mode detection passes with/without the copy")
    ap.add_argument("--config", default='{"enable_lp": true}', help="model_config of the review-mode detection")
    ap.add_argument("--only", choices=("frames", "worker", "timeline"), help="one part of the bench")
    args = ap.parse_args()
    print(cpu_line(), f"(load average {os.getloadavg()[0]:.1f}: wall times grow with it, CPU times less)")
    if args.only in (None, "worker"):
        worker_copy(args.clip, args.detect_runs, json.loads(args.config))
    if args.only == "worker":
        return
    if args.only in (None, "frames"):
        frames(args.clip, args.runs)
    if args.only == "frames":
        return
    with tempfile.TemporaryDirectory() as tmp:
        timeline(Path(tmp), args.hour_candidates, args.runs)


if __name__ == "__main__":
    main()
