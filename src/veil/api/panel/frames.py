"""A video's frames at review resolution, decoded on demand: one open decoder per video that steps forward
for the next frames (a reviewer's usual move) and seeks to the keyframe before a far one; the JPEGs of the
most recent frames are kept (bounded), and so are the decoders of the most recent videos."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

from .review_data import Bounded

REVIEW_SIDE = 960  # the long side of a frame at review resolution
STEP_LIMIT = 48  # frames decoded forward before a seek is cheaper
SKIP_UNTIL = 16  # after a seek, frames nothing refers to are skipped up to this many frames before the target


class _Decoder:
    def __init__(self, path: Path, pts: np.ndarray) -> None:
        import av

        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.pts, self.lock = pts, threading.Lock()
        self._frames, self.position = None, -1  # the index of the frame decoded last

    def frame(self, index: int, side: int):
        with self.lock:
            if not (self.position < index <= self.position + STEP_LIMIT) or self._frames is None:
                self._seek(index, skip=True)
            frame = self._decode_to(index)
            if frame is None:  # the frame was skipped (it was in flight when skipping stopped): decode it again
                self._seek(index, skip=False)
                frame = self._decode_to(index, exact=False)
        if frame is None:
            raise IndexError(f"frame {index}: past the end of the video")
        image = frame.to_image()
        image.thumbnail((side, side))
        return image

    def _decode_to(self, index: int, exact: bool = True):
        for frame in self._frames:
            self.position = self._index(frame)
            if self.position >= index - SKIP_UNTIL:
                self.stream.codec_context.skip_frame = "DEFAULT"
            if self.position == index or (self.position > index and not exact):
                return frame
            if self.position > index:
                return None
        self._frames = None
        return None

    def _seek(self, index: int, skip: bool) -> None:
        target = self.pts[index] if np.isfinite(self.pts[index]) else 0.0
        self.container.seek(max(0, int(target / self.stream.time_base)) if target > 0 else 0,
                            stream=self.stream, backward=True, any_frame=False)
        self._frames, self.position = self.container.decode(self.stream), -1
        # fast-forward from the keyframe skipping the frames nothing refers to: 1.4 times faster on x264's
        self.stream.codec_context.skip_frame = "NONREF" if skip and index > SKIP_UNTIL else "DEFAULT"

    def _index(self, frame) -> int:
        if frame.time is None or not np.isfinite(self.pts).all():
            return self.position + 1
        half = 0.5 / float(self.stream.average_rate or 30)
        return int(np.searchsorted(self.pts, frame.time - half))

    def close(self) -> None:
        self.container.close()


class FrameServer:
    def __init__(self, videos: int = 4, frames: int = 512) -> None:
        self._decoders = Bounded(videos, on_drop=lambda d: d.close())
        self._jpegs = Bounded(frames)

    def jpeg(self, path: Path, pts: np.ndarray, index: int, side: int = REVIEW_SIDE) -> bytes:
        def make() -> bytes:
            decoder = self._decoders.get_or_make(str(path), lambda: _Decoder(path, pts))
            out = io.BytesIO()
            decoder.frame(index, side).save(out, format="JPEG", quality=82)
            return out.getvalue()

        return self._jpegs.get_or_make((str(path), index, side), make)
