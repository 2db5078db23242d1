"""Build low-light variants of a labelled dev set for `bench/eval_detection.py` (written outside the repository).

    python bench/make_lowlight.py [--data ../shared/data] [--set ro_dashcam_plates] [--out /tmp/veil-lowlight]

Each step degrades every image of the set a measured notch further, in the order a night dash-cam
does: darker (exposure gain and gamma), a red cast (brake lights, sodium lamps: blue and green
channels scaled down), sensor noise (Gaussian, on the darkened image) and horizontal motion blur
(a line kernel). Labels are copied unchanged (the blur is centred, so boxes do not move).
Output: ``<out>/<set>_step<k>/{images/, labels.json}`` for k = 1..4, ready for
``eval_detection.py --data <out>``. The images stay out of the repository (the sources' licences).

=====  ====  =====  ==============  =====  ===========
step   gain  gamma  green, blue     noise  motion blur
=====  ====  =====  ==============  =====  ===========
1      0.70  1.2    0.90, 0.80      2      3 px
2      0.55  1.4    0.80, 0.65      3      5 px
3      0.45  1.6    0.70, 0.55      4      7 px
4      0.35  1.8    0.60, 0.45      5      9 px
=====  ====  =====  ==============  =====  ===========

Step 4 leaves a 130 px plate at about 15 grey levels above its surroundings: still readable by eye,
the darkest a night dash-cam frame gets before the plate itself is lost in the noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEPS = {  # step: (gain, gamma, (green, blue) scale, noise sigma, motion blur length px)
    1: (0.70, 1.2, (0.90, 0.80), 2.0, 3),
    2: (0.55, 1.4, (0.80, 0.65), 3.0, 5),
    3: (0.45, 1.6, (0.70, 0.55), 4.0, 7),
    4: (0.35, 1.8, (0.60, 0.45), 5.0, 9),
}


def degrade(bgr: np.ndarray, step: int, seed: int) -> np.ndarray:
    gain, gamma, (green, blue), sigma, length = STEPS[step]
    x = (bgr.astype(np.float32) / 255.0) ** gamma * gain
    x[:, :, 0] *= blue
    x[:, :, 1] *= green
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    x = cv2.filter2D(x * 255.0, -1, kernel, borderType=cv2.BORDER_REFLECT)
    x += np.random.default_rng(seed).normal(0.0, sigma, x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--set", default="ro_dashcam_plates")
    parser.add_argument("--out", type=Path, default=Path("/tmp/veil-lowlight"))
    parser.add_argument("--steps", default="1,2,3,4")
    args = parser.parse_args()
    doc = json.loads((args.data / args.set / "labels.json").read_text())
    for step in (int(s) for s in args.steps.split(",")):
        target = args.out / f"{args.set}_step{step}"
        (target / "images").mkdir(parents=True, exist_ok=True)
        for index, item in enumerate(doc["items"]):
            bgr = cv2.imread(str(args.data / args.set / item["file"]), cv2.IMREAD_COLOR)
            name = Path(item["file"]).with_suffix(".png").name
            cv2.imwrite(str(target / "images" / name), degrade(bgr, step, seed=index))
        items = [dict(item, file=f"images/{Path(item['file']).with_suffix('.png').name}") for item in doc["items"]]
        out = dict(
            doc,
            set=f"{args.set}_step{step}",
            items=items,
            notes=f"{doc.get('notes', '')} Degraded by bench/make_lowlight.py step {step}: {STEPS[step]}.",
        )
        (target / "labels.json").write_text(json.dumps(out, indent=1))
        print(f"{target}: {len(items)} images")


if __name__ == "__main__":
    main()
