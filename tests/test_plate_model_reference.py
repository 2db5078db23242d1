"""The converted plate model reproduces the upstream ultralytics export (reference/plate_model_reference.json).

The pre/post-processing here is a minimal re-statement of the reference file's description (ultralytics LetterBox and
scale_boxes): input sizes in the file are ``[width, height]``; the image is resized by
``r = min(W_in / w, H_in / h)`` to ``(round(w r), round(h r))`` with bilinear interpolation and padded centred with
grey 114 (``top = round(dh - 0.1)``, ``left = round(dw - 0.1)`` where ``dh, dw`` are half the padding); boxes are
mapped back with ``(x - left) / r`` and clipped to the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from veil.engine import runtime, weights

BOX_TOL_PX = 1.0
SCORE_TOL = 0.01
CONF = 0.05
NMS_IOU = 0.7


def _letterbox(bgr: np.ndarray, size_wh: tuple[int, int]) -> tuple[np.ndarray, float, int, int]:
    h, w = bgr.shape[:2]
    out_w, out_h = size_wh
    r = min(out_w / w, out_h / h)
    new_w, new_h = round(w * r), round(h * r)
    if (new_w, new_h) != (w, h):
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    assert padded.shape[:2] == (out_h, out_w)
    return padded, r, left, top


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def _detect(session, bgr: np.ndarray, size_wh: tuple[int, int], conf: float) -> np.ndarray:
    """Boxes [x1, y1, x2, y2, score] in original pixels, as the reference describes."""
    img, r, left, top = _letterbox(bgr, size_wh)
    x = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0]  # [5, N]
    assert out.shape[0] == 5
    out = out[:, out[4] > conf]
    cx, cy, bw, bh, score = out
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    keep = _nms(boxes, score, NMS_IOU)
    boxes, score = boxes[keep], score[keep]
    boxes -= [left, top, left, top]
    boxes /= r
    h, w = bgr.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return np.concatenate([boxes, score[:, None]], axis=1)


def _deviation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float(np.abs(a[:4] - b[:4]).max()), float(abs(a[4] - b[4]))


@pytest.fixture(scope="module")
def plate_session():
    try:
        path = weights.model_path("plates")
    except Exception as exc:  # ModelsMissing: the README's test command installs the models first
        pytest.fail(f"{exc}")
    return runtime.create_session(path, "cpu")


def test_plate_model_matches_reference(shared_data: Path, plate_session) -> None:
    ref = json.loads((shared_data / "reference" / "plate_model_reference.json").read_text())
    worst_box, worst_score, compared, failures = 0.0, 0.0, 0, []
    for item in ref["items"]:
        bgr = cv2.imread(str(shared_data / item["file"]), cv2.IMREAD_COLOR)
        assert bgr is not None, item["file"]
        for key, case in item.items():
            if not isinstance(case, dict):
                continue
            size_wh = tuple(case["input"])
            # Compare against our boxes down to a slightly lower threshold, so a reference box scored 0.0501 upstream
            # and 0.0499 here is still found; NMS keeps the same boxes above 0.05 either way (only lower scores are
            # suppressed by higher ones).
            ours = _detect(plate_session, bgr, size_wh, CONF - SCORE_TOL)
            matched = np.zeros(len(ours), bool)
            for rbox in np.asarray(case["boxes"], np.float64).reshape(-1, 5):
                devs = [(_deviation(o, rbox), j) for j, o in enumerate(ours) if not matched[j]]
                ok = [(d, j) for d, j in devs if d[0] <= BOX_TOL_PX and d[1] <= SCORE_TOL]
                if not ok:
                    failures.append(f"{item['file']} {key} {size_wh}: reference box {rbox.tolist()} not reproduced")
                    continue
                (box_dev, score_dev), j = min(ok, key=lambda t: t[0][0])
                matched[j] = True
                worst_box, worst_score = max(worst_box, box_dev), max(worst_score, score_dev)
                compared += 1
            extra = ours[~matched & (ours[:, 4] > CONF + SCORE_TOL)]
            failures += [f"{item['file']} {key} {size_wh}: extra box {e.round(2).tolist()}" for e in extra]
    print(
        f"\nplate model vs reference: {compared} boxes, max |box| deviation {worst_box:.3f} px, "
        f"max |score| deviation {worst_score:.4f}"
    )
    assert compared > 0
    assert not failures, "\n".join(failures)
