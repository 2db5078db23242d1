"""Redaction of decoded video frames in place: in YUV 4:2:0, only the window around the detections is
converted to RGB, redacted and written back, so pixels outside the redaction mask stay bit-identical."""

from __future__ import annotations

import av
import cv2
import numpy as np

from .config import ModelConfig
from .detections import Detections
from .yuv import i420, planes


def redact_yuv(frame: av.VideoFrame, dets: Detections, config: ModelConfig) -> av.VideoFrame:
    """Redact the detections in a yuv420p frame, in place; pixels outside the mask are left exact.

    Only a window around the detections is converted to RGB (where `redact` works) and back.
    """
    from .redact import redaction_mask

    h, w = frame.height, frame.width
    frame.make_writable()  # copies the picture if the decoder still references it
    y, u, v = _plane_views(frame)
    for x0, y0, x1, y1 in _windows(dets, w, h):
        if _touches_inner_border(
            mask := redaction_mask((y1 - y0, x1 - x0), _shift(dets, x0, y0), config), (x0, y0, x1, y1), w, h
        ):
            x0, y0, x1, y1 = 0, 0, w, h  # the window was too small for a mask: use the whole frame
            mask = redaction_mask((h, w), dets, config)
        if mask.any():
            _redact_window(y, u, v, _shift(dets, x0, y0), config, (x0, y0, x1, y1), mask)
    return frame


def _shift(dets: Detections, x0: int, y0: int) -> Detections:
    return Detections(dets.xyxy - np.array([x0, y0, x0, y0], np.float32), dets.scores, dets.kinds)


def _plane_views(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable numpy views of a yuv420p frame's Y, U, V planes (rows may be padded: line_size)."""
    views = []
    for i, plane in enumerate(frame.planes[:3]):
        rows, cols = (frame.height, frame.width) if i == 0 else (frame.height // 2, frame.width // 2)
        # a memoryview of the plane: numpy's stubs take buffers as a list of types (no Buffer protocol on 3.11)
        views.append(np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:rows, :cols])
    return views[0], views[1], views[2]


def _redact_window(
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    local: Detections,
    config: ModelConfig,
    window: tuple[int, int, int, int],
    mask: np.ndarray,
) -> None:
    """Convert one window to RGB, redact it, and write back the pixels under the mask (in place)."""
    from .redact import redact

    x0, y0, x1, y1 = window
    wy, wu, wv = y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
    crop = cv2.cvtColor(i420(wy, wu, wv), cv2.COLOR_YUV2RGB_I420)
    redact(crop, local, config)
    ny, nu, nv = planes(cv2.cvtColor(crop, cv2.COLOR_RGB2YUV_I420), y1 - y0, x1 - x0)
    np.copyto(wy, ny, where=mask)
    cmask = mask[0::2, 0::2] | mask[1::2, 0::2] | mask[0::2, 1::2] | mask[1::2, 1::2]
    np.copyto(wu, nu, where=cmask)
    np.copyto(wv, nv, where=cmask)


def _touches_inner_border(mask: np.ndarray, window: tuple[int, int, int, int], width: int, height: int) -> bool:
    """True when the mask reaches a window edge that is not the frame's edge (window too small)."""
    x0, y0, x1, y1 = window
    return bool(
        (x0 > 0 and mask[:, 0].any())
        or (y0 > 0 and mask[0].any())
        or (x1 < width and mask[:, -1].any())
        or (y1 < height and mask[-1].any())
    )


def _windows(dets: Detections, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """One window (x0, y0, x1, y1; even, as 4:2:0 needs) around all detections, with room for the
    mask shape (which grows beyond the box) and some context for the blur."""
    xyxy = dets.xyxy.astype(np.float64)
    size = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
    pad = 0.8 * size + 8  # the face ellipse reaches ~0.6 box sizes out; checked by the caller
    x0 = max(0, int(np.min(xyxy[:, 0] - pad)) // 2 * 2)
    y0 = max(0, int(np.min(xyxy[:, 1] - pad)) // 2 * 2)
    x1 = min(width, -(-int(np.max(xyxy[:, 2] + pad)) // 2) * 2)
    y1 = min(height, -(-int(np.max(xyxy[:, 3] + pad)) // 2) * 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return []
    return [(x0, y0, x1, y1)]


def redact_any(frame: av.VideoFrame, dets: Detections, config: ModelConfig) -> av.VideoFrame:
    """Redaction for frames that are not even-sized yuv420p (odd sizes): through a full RGB copy."""
    from .redact import redact

    rgb = redact(frame.to_ndarray(format="rgb24"), dets, config)
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    copy_frame_props(frame, out)
    return out


def copy_frame_props(src: av.VideoFrame, dst: av.VideoFrame) -> None:
    dst.pts = src.pts
    if src.time_base is not None:
        dst.time_base = src.time_base
    if src.duration:
        dst.duration = src.duration
