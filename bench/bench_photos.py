"""Photo detection speed: the working tree's detector against an earlier commit's, on the dev images.

    .venv/bin/python bench/bench_photos.py [--baseline 66987d6] [--sets a,b] [--rounds 3]
                                           [--config '{"enable_lp": true}'] [--data ../shared/data]

The baseline's ``src/veil`` is exported from git (``git archive``) into a temporary folder. Each
round times the baseline and the working tree one after the other, each in a fresh process that
loads the models, decodes every image and runs one warm-up image before the clock starts; the
order alternates between rounds, so slow spells of a shared machine fall on both. Prints the CPU
and runtime, images/s per round, the medians and their ratio. The default baseline, ``66987d6``,
is the detector before the multi-view faces and the low-light plate pass (issue 11's "today").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_video import cpu_line  # noqa: E402
from eval_detection import load_sets  # noqa: E402

_CHILD = """
import json, sys, time
import cv2
from veil.engine.config import ModelConfig
from veil.engine.detect import Detector
paths, config = json.loads(sys.argv[1]), json.loads(sys.argv[2])
images = [cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
detector = Detector(ModelConfig(**config))
detector.detect(images[0])
start = time.perf_counter()
found = sum(len(detector.detect(image)) for image in images)
print(json.dumps({"seconds": time.perf_counter() - start, "found": found}))
"""


def image_paths(data: Path, sets: list[str] | None) -> list[str]:
    return [str(doc["dir"] / item["file"]) for doc in load_sets(data, sets) for item in doc["items"]]


def export(ref: str, target: Path) -> Path:
    """``src/veil`` of ``ref`` under ``target``; returns the folder to put on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src/veil"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def timed_run(src: Path, paths: list[str], config: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths), json.dumps(config)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="66987d6", help="git commit of the detector to compare with")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", help="comma-separated set names (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default='{"enable_lp": true}', help="ModelConfig JSON (default: seed defaults + plates)")
    args = parser.parse_args()
    paths = image_paths(args.data, args.sets.split(",") if args.sets else None)
    if not paths:
        sys.exit(f"no images under {args.data}")
    config = json.loads(args.config)
    print(f"cpu: {cpu_line()}")
    print(f"runtime: VEIL_EXECUTION_PROVIDER={os.environ.get('VEIL_EXECUTION_PROVIDER', '(auto)')}")
    print(f"{len(paths)} images, config {json.dumps(config)}, baseline {args.baseline}, {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="veil-baseline-") as tmp:
        rows = {"baseline": (export(args.baseline, Path(tmp)), []), "current": (REPO / "src", [])}
        for round_ in range(args.rounds):
            order = list(rows) if round_ % 2 == 0 else list(reversed(rows))
            for name in order:
                result = timed_run(rows[name][0], paths, config)
                rate = len(paths) / result["seconds"]
                rows[name][1].append(rate)
                print(f"  round {round_ + 1} {name:8s} {rate:6.2f} images/s ({result['seconds']:.1f} s, "
                      f"{result['found']} detections)", flush=True)
    medians = {name: statistics.median(rates) for name, (_, rates) in rows.items()}
    for name, rate in medians.items():
        print(f"{name:8s} median {rate:6.2f} images/s")
    print(f"current / baseline: {medians['current'] / medians['baseline']:.2f}x images/s")


if __name__ == "__main__":
    main()
