"""Build the 1080p30 benchmark clip from the two real dev videos (not a synthetic pattern).

    python bench/make_clip.py OUT.mp4 [--data ../shared/data] [--seconds 20]

Layout (1920x1080, 30 fps): the portrait selfie clip (EgoBlur demo, 608x1080, a close-up face) on
the left; the parking-lot clip (Intel sample, cars with small plates) scaled 1.71x on the right,
with a time-shifted, cropped second view of it below. Light film grain (sigma 2.5, fixed seed) is
added so the encoder sees camera-like noise. The parking-lot clip's audio is copied for the first
`--seconds`. Write OUT outside the repository: the sources' licences (Apache-2.0, CC BY 4.0) are
listed in `shared/data/videos/sources.md`.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

W, H, FPS = 1920, 1080, 30


def _frames_by_time(path: Path) -> tuple[list[float], list[np.ndarray]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        times, frames = [], []
        for f in c.decode(s):
            times.append(float(f.time))
            frames.append(f.to_ndarray(format="rgb24"))
    return times, frames


def _at(times: list[float], frames: list[np.ndarray], t: float) -> np.ndarray:
    i = int(np.searchsorted(times, t, side="right")) - 1
    return frames[max(0, min(i, len(frames) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    videos = args.data / "videos"
    face_t, face = _frames_by_time(videos / "egoblur_gen1_test_video.mp4")
    cars_path = videos / "intel_car-detection.mp4"
    cars_t, cars = _frames_by_time(cars_path)
    cars_span = cars_t[-1]
    rng = np.random.default_rng(7)
    grain = [rng.normal(0, 2.5, (H, W, 1)).astype(np.float32) for _ in range(8)]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(cars_path)) as audio_in, av.open(str(args.out), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.options = {"crf": "18", "preset": "fast"}
        a_in = audio_in.streams.audio[0] if audio_in.streams.audio else None
        a_out = out.add_stream_from_template(a_in) if a_in is not None else None
        packets = (
            iter(p for p in audio_in.demux(a_in) if p.dts is not None and p.pts is not None)
            if a_in is not None
            else iter(())
        )
        pending = next(packets, None)
        for i in range(round(args.seconds * FPS)):
            t = i / FPS
            while pending is not None and pending.pts * pending.time_base < min(t, args.seconds):
                pending.stream = a_out
                out.mux(pending)
                pending = next(packets, None)
            canvas = np.zeros((H, W, 3), np.uint8)
            canvas[:, :608] = cv2.resize(_at(face_t, face, t), (608, 1080))
            top = cv2.resize(_at(cars_t, cars, t % cars_span), (1312, 738), interpolation=cv2.INTER_CUBIC)
            canvas[:738, 608:] = top
            other = cv2.resize(_at(cars_t, cars, (t + 10) % cars_span), (1312, 738), interpolation=cv2.INTER_CUBIC)
            canvas[738:, 608:] = other[200:542]
            noisy = canvas.astype(np.float32) + grain[i % len(grain)]
            frame = av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        while pending is not None and pending.pts * pending.time_base < args.seconds:
            pending.stream = a_out
            out.mux(pending)
            pending = next(packets, None)
    print(f"wrote {args.out} ({W}x{H}, {FPS} fps, {args.seconds:g} s)")


if __name__ == "__main__":
    main()
