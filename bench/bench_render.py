"""Re-render speed and detections-document cost (detect once, render many).

    python bench/bench_render.py CLIP [--runs 3] [--config '{"enable_lp": true}'] [--hour-candidates 3]

Prints the CPU and, on CLIP (the 1080p bench clip: `bench/make_clip.py`):
  * render: `veil render CLIP DOC` at other thresholds (0.6 instead of 0.5) from a document that `veil detect
    --candidates` wrote once (not timed), against the floor measured in the same run: FFmpeg decode + libx264
    at Veil's preset and CRF (`bench_video.py`'s). Whole-command frames/s, medians of `--runs` round-robin runs.
  * a one-hour 1080p30 document (108,000 frames, `--hour-candidates` synthetic candidates a frame, landmarks on
    faces): its size, and the peak memory (RSS) of the processes that wrote and read it, streaming.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_video import _FLOOR, cpu_line, frame_count, measure

_HOUR = """
import resource, sys
import numpy as np
from veil.engine.detections import Detections
from veil.engine.document import DocumentWriter, Header, iter_frames
path, per = sys.argv[1], int(sys.argv[2])
if sys.argv[3] == "write":
    rng = np.random.default_rng(0)
    header = Header("video", 1920, 1080, {"faces": 0.3, "plates": 0.3}, {}, {"fps": 30.0, "stride": 1, "scan": 2})
    with DocumentWriter(path, header) as doc:
        for i in range(108_000):
            xy = rng.uniform(0, 1800, (per, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(20, 120, (per, 2))], axis=1)
            kinds = np.arange(per) % 2
            marks = np.where((kinds == 0)[:, None], np.repeat(boxes[:, :2], 5, axis=0).reshape(per, 10), np.nan)
            doc.frame(i, i / 30, Detections(boxes, rng.uniform(0.3, 1.0, per), kinds, landmarks=marks))
else:
    n = sum(len(f.candidates) for f in iter_frames(path))
    assert n == 108_000 * per, n
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def hour_document(work: Path, per: int) -> None:
    doc = work / "hour.detections.gz"
    peaks = {}
    for step in ("write", "read"):
        out = subprocess.run(
            [sys.executable, "-c", _HOUR, str(doc), str(per), step], capture_output=True, text=True, check=True
        )
        peaks[step] = int(out.stdout.split()[-1]) / 1024
    size = doc.stat().st_size
    print(
        f"one-hour 1080p30 document, {per} candidates a frame: {size / 1e6:.1f} MB "
        f"({size / 108_000:.0f} bytes a frame); peak RSS writing {peaks['write']:.0f} MiB, "
        f"reading {peaks['read']:.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", default='{"enable_lp": true}', help="model_config of the detection run")
    ap.add_argument("--hour-candidates", type=int, default=3)
    args = ap.parse_args()

    from veil.engine.config import ModelConfig
    from veil.settings import engine_settings

    X264_PRESET = engine_settings().x264_preset

    frames = frame_count(args.clip)
    work = Path(tempfile.mkdtemp(prefix="veil-bench-render-"))
    veil = shutil.which("veil", path=str(Path(sys.executable).parent)) or "veil"
    print(f"cpu: {cpu_line()}")
    try:
        doc = work / "clip.detections.gz"
        subprocess.run(
            [veil, "detect", str(args.clip), "--candidates", "--json", str(doc), "--config", args.config],
            check=True,
            capture_output=True,
        )
        print(
            f"clip {args.clip} ({frames} frames); document {doc.stat().st_size / 1e3:.0f} kB "
            f"(detected once with {args.config})",
            flush=True,
        )
        crf = str(ModelConfig().video_crf)
        tools = {
            "render at 0.6": [
                veil,
                "render",
                str(args.clip),
                str(doc),
                "-o",
                str(work / "render"),
                "--config",
                json.dumps({"blur_threshold": 0.6, "lp_threshold": 0.6}),
            ],
            "floor": [sys.executable, "-c", _FLOOR, str(args.clip), str(work / "floor.mp4"), X264_PRESET, crf],
        }
        results = measure(tools, frames, args.runs)
        (render, render_cpu), (floor, floor_cpu) = results["render at 0.6"], results["floor"]
        print(
            f"\nrender {render:.2f} fps ({render_cpu:.0f} CPU ms/frame), floor {floor:.2f} fps "
            f"({floor_cpu:.0f} CPU ms/frame): render / floor {render / floor:.2f}x"
        )
        hour_document(work, args.hour_candidates)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
