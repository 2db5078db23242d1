"""YUV 4:2:0 frames as numpy planes, and RGB copies of their regions (detectors work in RGB)."""

from __future__ import annotations

import av
import cv2
import numpy as np


def planes(yuv: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U, V planes of a packed I420 array (as PyAV's yuv420p `to_ndarray` gives)."""
    q = height * width // 4
    flat = yuv.reshape(-1)
    y = flat[: height * width].reshape(height, width)
    u = flat[height * width : height * width + q].reshape(height // 2, width // 2)
    v = flat[height * width + q : height * width + 2 * q].reshape(height // 2, width // 2)
    return y, u, v


def i420(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, w = y.shape
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)


class FramePixels:
    """A decoded frame's pixels, read once; RGB copies of regions at any scale."""

    def __init__(self, frame: av.VideoFrame) -> None:
        self.frame = frame
        self.yuv = frame.format.name in ("yuv420p", "yuvj420p") and frame.width % 2 == 0 and frame.height % 2 == 0
        self._data = frame.to_ndarray() if self.yuv else frame.to_ndarray(format="rgb24")

    def block_means(self, block: int) -> np.ndarray:
        """Mean luma (float32) of each `block` x `block` square (the last partial row/column dropped)."""
        if self.yuv:
            luma = planes(self._data, self.frame.height, self.frame.width)[0]
        else:
            luma = cv2.cvtColor(self._data, cv2.COLOR_RGB2GRAY)
        rows, cols = max(1, luma.shape[0] // block), max(1, luma.shape[1] // block)
        luma = luma[: rows * block, : cols * block]
        return cv2.resize(luma, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)

    def rgb(self, x0: int, y0: int, x1: int, y1: int, scale: float) -> np.ndarray:
        """RGB copy of the region (x0, y0, x1, y1; even coordinates) resized by `scale` (resized in
        YUV, which is cheaper, when the frame is yuv420p)."""
        width, height = max(2, round((x1 - x0) * scale)), max(2, round((y1 - y0) * scale))
        if not self.yuv:
            rgb = self._data[y0:y1, x0:x1]
            return (
                np.ascontiguousarray(rgb)
                if (width, height) == (x1 - x0, y1 - y0)
                else cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            )
        y, u, v = planes(self._data, self.frame.height, self.frame.width)
        y, u, v = y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        width, height = width + width % 2, height + height % 2
        if (width, height) != (x1 - x0, y1 - y0):
            mode = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            y = cv2.resize(y, (width, height), interpolation=mode)
            u = cv2.resize(u, (width // 2, height // 2), interpolation=mode)
            v = cv2.resize(v, (width // 2, height // 2), interpolation=mode)
        return cv2.cvtColor(i420(y, u, v), cv2.COLOR_YUV2RGB_I420)
