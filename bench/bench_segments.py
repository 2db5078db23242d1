"""Wall time of one video unsplit and split into segments run by N worker processes.

    python bench/bench_segments.py CLIP [--segment-seconds 60] [--workers 1,2]
                                        [--config '{"enable_lp": true, "lp_track": true}']

Prints the CPU, then the wall-clock seconds of `anonymize_video` (unsplit, one process) and of
`anonymize_split` with each worker count (spawned processes; their start-up and model loading
included, as `veil anonymize --jobs N` pays them), with the speed-up over unsplit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_video import cpu_line, frame_count  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", type=Path)
    ap.add_argument("--segment-seconds", type=float, default=60.0)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker process counts")
    ap.add_argument("--config", default='{"enable_lp": true, "lp_track": true}', help="model_config JSON")
    args = ap.parse_args()

    from veil.engine.config import ModelConfig
    from veil.engine.segments import anonymize_split, plan_segments
    from veil.engine.video import anonymize_video

    config = ModelConfig(**json.loads(args.config))
    frames = frame_count(args.clip)
    segments = plan_segments(args.clip, config, args.segment_seconds)
    print(cpu_line())
    print(
        f"clip {args.clip}: {frames} frames; config {config.model_dump_json()}; "
        f"{len(segments)} segments of about {args.segment_seconds} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        anonymize_video(args.clip, Path(out) / f"unsplit{args.clip.suffix}", config)
        base = time.perf_counter() - started
        print(f"unsplit            {base:8.1f} s  {frames / base:6.2f} frames/s", flush=True)
        for workers in (int(w) for w in args.workers.split(",")):
            started = time.perf_counter()
            anonymize_split(
                args.clip, Path(out) / f"split{workers}{args.clip.suffix}", config, args.segment_seconds, workers
            )
            took = time.perf_counter() - started
            print(
                f"split, {workers:2d} workers  {took:8.1f} s  {frames / took:6.2f} frames/s  "
                f"x{base / took:.2f} vs unsplit",
                flush=True,
            )


if __name__ == "__main__":
    main()
