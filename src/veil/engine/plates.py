"""Licence-plate detection with the YOLOv8n plate model (ONNX, dynamic H/W) on ONNX Runtime.

Pre-processing as upstream (ultralytics): letterbox into the input size keeping the aspect ratio,
centred, grey 114 padding, RGB, /255, NCHW float32. Output ``[1, 5, N]`` = cx, cy, w, h (input
pixels) and the plate probability; we keep candidates above a raw floor, run NMS (IoU 0.7, as
upstream) and undo the letterbox. Scores returned here are raw; `veil.engine.calibration` maps them.

``size`` is the longest input side. ``rect=True`` (default) pads the short side only to the next
multiple of 32 (ultralytics' "rect" inference: same result, less work); ``rect=False`` pads to a
square ``size x size`` (the plain export's fixed 640x640 input).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from .slicing import nms

NMS_IOU = 0.7
_lock = threading.Lock()


class PlateYolo:
    """Raw plate detector. ``PlateYolo()(image_rgb, size=1280) -> (xyxy, raw_scores)``."""

    def __init__(self, provider: str | None = None) -> None:
        from .runtime import create_session
        from .weights import model_path

        with _lock:
            self.session = create_session(model_path("plates"), provider)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(
        self, image_rgb: np.ndarray, *, size: int = 1280, rect: bool = True, floor: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detect plates with the longest input side ``size`` (a multiple of 32); boxes in original
        pixels (float32 Nx4) and raw scores (N) above ``floor``."""
        h, w = image_rgb.shape[:2]
        r = size / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        if rect:
            out_w, out_h = -(-nw // 32) * 32, -(-nh // 32) * 32
        else:
            out_w = out_h = size
        resized = image_rgb if (nw, nh) == (w, h) else cv2.resize(image_rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        dw, dh = (out_w - nw) / 2, (out_h - nh) / 2
        top, left = round(dh - 0.1), round(dw - 0.1)
        canvas = np.full((out_h, out_w, 3), 114, np.uint8)
        canvas[top : top + nh, left : left + nw] = resized
        blob = (canvas.transpose(2, 0, 1)[None].astype(np.float32)) / np.float32(255)
        out = self.session.run(None, {self.input_name: blob})[0][0]  # 5 x N
        keep = out[4] > floor
        cx, cy, bw, bh, scores = out[:, keep]
        if not len(scores):
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        idx = nms(boxes, scores, NMS_IOU)
        boxes, scores = boxes[idx], scores[idx]
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / np.float32(r)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        return boxes.astype(np.float32), scores.astype(np.float32)


# Low-light view: frames darker than this mean luma (0..255), or with channel means this far apart
# (a red brake-light / sodium-lamp cast), get a second plate pass on a corrected copy.
DARK_LUMA = 90.0
CAST_RATIO = 1.35
_MAX_GAIN = 2.5  # gray-world channel gain at most
_CLAHE_CLIP, _CLAHE_TILES = 3.0, (8, 8)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def low_light_view(image_rgb: np.ndarray) -> np.ndarray | None:
    """A gray-world balanced, locally contrast-equalised (CLAHE on L*) copy of a dark or colour-cast
    frame; None for other frames.

    Measured on darkened, red-cast dash-cam frames (`bench/make_lowlight.py` step 2): plate recall
    0.79 -> 0.86 with this pass added (a global gamma instead of CLAHE found nothing more). Noise is
    what defeats it next (step 3 darkness and cast alone: 29 of 29 plates found; with the noise 23,
    with noise and motion blur 12): the 5x5 blur before it and the pass at 800 px
    (`veil.engine.detect.LOW_LIGHT_SIDE`) found 19 (a 3x3 blur at 1280 px 12, 5x5 at 1280 px 14, a
    median or bilateral filter no more).
    """
    small = cv2.resize(image_rgb, (64, 36), interpolation=cv2.INTER_AREA).reshape(-1, 3).astype(np.float32)
    means = small.mean(axis=0) + 1.0
    if float(means @ _LUMA) >= DARK_LUMA and means.max() / means.min() < CAST_RATIO:
        return None
    gains = np.clip(means.mean() / means, 1.0 / _MAX_GAIN, _MAX_GAIN)
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :], 0, 255).astype(np.uint8)
    # A blur first: CLAHE would otherwise lift a dark frame's sensor noise with the plate.
    balanced = cv2.LUT(cv2.GaussianBlur(image_rgb, (5, 5), 0), lut.reshape(256, 1, 3))
    lab = cv2.cvtColor(balanced, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=_CLAHE_CLIP, tileGridSize=_CLAHE_TILES).apply(
        np.ascontiguousarray(lab[:, :, 0])
    )
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
