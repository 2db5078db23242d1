"""Model latency per runtime: ONNX Runtime's CPU provider vs OpenVINO (float32, bfloat16), same inputs.

    python bench/bench_runtime.py [--runs 9]

For each detector at the input sizes the video and image paths use, prints the median milliseconds
per inference (threads: `VEIL_ORT_THREADS`, default the physical cores) and the speed-up against
ONNX Runtime in the same process, plus the largest difference of the outputs against it. OpenVINO
bfloat16 rows appear only where the CPU computes bfloat16 natively (AMX / AVX512-BF16).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from veil.engine import runtime
from veil.engine.faces import _dynamic_model
from veil.engine.weights import model_path

# (model, input name, value range, [(height, width), ...]): video sizes first, then the image pass.
_CASES = [
    ("plates", "images", 1.0, [(544, 960), (736, 1280)]),
    ("centerface", "input.1", 255.0, [(384, 640), (1088, 1920)]),
]


def _median_ms(session, feed: dict, runs: int) -> tuple[float, np.ndarray]:
    out = session.run(None, feed)[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    if "openvino" not in runtime.available_providers():
        raise SystemExit("openvino is not installed here (it is a dependency on x86-64 only)")
    import openvino as ov

    precisions = ["f32"] + (["bf16"] if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else [])
    print(f"threads {runtime.thread_count()}, load {os.getloadavg()[0]:.1f}, median of {args.runs}")
    print(f"{'model':<11} {'input':>10}  {'runtime':<14} {'ms':>7} {'speed-up':>9} {'max |diff|':>11}")
    for name, input_name, scale, shapes in _CASES:
        path = _dynamic_model(model_path(name)) if name == "centerface" else model_path(name)
        sessions = {"onnxruntime": runtime.create_session(path, "cpu")}
        for precision in precisions:
            os.environ["VEIL_OPENVINO_PRECISION"] = precision
            sessions[f"openvino {precision}"] = runtime.create_session(path, "openvino")
        os.environ.pop("VEIL_OPENVINO_PRECISION", None)
        for h, w in shapes:
            x = np.random.default_rng(0).uniform(0, scale, (1, 3, h, w)).astype(np.float32)
            base_ms, base_out = None, None
            for label, session in sessions.items():
                ms, out = _median_ms(session, {input_name: x}, args.runs)
                if base_ms is None:
                    base_ms, base_out = ms, out
                diff = float(np.abs(out - base_out).max())
                print(f"{name:<11} {w:>5}x{h:<4}  {label:<14} {ms:7.1f} {base_ms / ms:8.2f}x {diff:11.4f}", flush=True)


if __name__ == "__main__":
    main()
