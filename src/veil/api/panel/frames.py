"""A video's frames at review resolution, decoded on demand.

A camera or encoder may put a keyframe only every few hundred frames, and a frame far from where a decoder
stands is then up to that many decodes away (over a second for 1080p). So frames come from a review copy
(`veil.engine.review_copy`: review resolution, a keyframe every few frames) where there is one: the one a
review-mode job stored beside its document, else one made here in a thread (`_Proxy`) the first time the
frames of such a video are asked for, usable file by file as it is written; until then frames come from the
video itself. Either way one open decoder per file steps forward to the next frames asked for (a reviewer's
usual move) and seeks to the keyframe before a frame it cannot reach by stepping (the file's keyframe index
says which). The JPEGs of the most recent frames are kept (bounded), and so are the decoders and review
copies of the most recent videos."""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...engine.review_copy import COPY_RATE, REVIEW_SIDE, ReviewCopyWriter, copy_index, locate, part_name, worth_copying
from .review_data import Bounded

log = logging.getLogger(__name__)
STEP_LIMIT = 48  # frames decoded forward before a seek is cheaper (a file without a keyframe index)
SKIP_UNTIL = 16  # after a seek, frames nothing refers to are skipped up to this many frames before the target


class _Decoder:
    """One open decoder of a video file; `index_of(frame)` numbers its decoded frames."""

    def __init__(self, path: Path, index_of=None) -> None:
        import av

        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.index_of, self.lock, self.closed = index_of, threading.Lock(), False
        self._frames, self.position = None, -1  # the index of the frame decoded last
        # keyframes by decode position (those of closed GOPs are shown at that index): mp4 and mov list them
        # in their index, read when the file opens; without one, a frame more than STEP_LIMIT ahead is sought
        self.keys = np.array([i for i, e in enumerate(self.stream.index_entries) if e.is_keyframe], np.int64)

    def frame(self, index: int):
        """The decoded frame `index` (an av.VideoFrame); IndexError past the end."""
        with self.lock:
            if self.closed:
                raise _Closed()
            if not self._can_step(index):
                self._seek(index, skip=True)
            frame = self._decode_to(index)
            if frame is None:  # the frame was skipped (it was in flight when skipping stopped): decode it again
                self._seek(index, skip=False)
                frame = self._decode_to(index, exact=False)
        if frame is None:
            raise IndexError(f"frame {index}: past the end of the video")
        return frame

    def _can_step(self, index: int) -> bool:
        if self._frames is None or index <= self.position:
            return False
        if len(self.keys):  # stepping decodes fewer frames than a seek unless a keyframe lies between
            before = np.searchsorted(self.keys, index, side="right") - 1
            return before < 0 or self.keys[before] <= self.position
        return index <= self.position + STEP_LIMIT

    def _decode_to(self, index: int, exact: bool = True):
        for frame in self._frames:
            self.position = self.index_of(frame) if self.index_of else self.position + 1
            if self.position >= index - SKIP_UNTIL:
                self.stream.codec_context.skip_frame = "DEFAULT"
            if self.position == index or (self.position > index and not exact):
                return frame
            if self.position > index:
                return None
        self._frames = None
        return None

    def _seek(self, index: int, skip: bool) -> None:
        target = self.time_of(index)
        self.container.seek(
            max(0, int(target / self.stream.time_base)) if target > 0 else 0,
            stream=self.stream,
            backward=True,
            any_frame=False,
        )
        self._frames, self.position = self.container.decode(self.stream), -1
        # fast-forward from the keyframe skipping the frames nothing refers to: 1.4 times faster on x264's
        self.stream.codec_context.skip_frame = "NONREF" if skip and index > SKIP_UNTIL else "DEFAULT"

    def time_of(self, index: int) -> float:
        return index / COPY_RATE

    def close(self) -> None:  # dropped from the cache: once a frame in flight is decoded
        with self.lock:
            self.closed = True
            self.container.close()


class _Closed(Exception):
    """The decoder was dropped from the cache (and closed) between being handed out and used."""


class _Source(_Decoder):
    """The video itself: its frames numbered by the document's pts (the engine's decode indices)."""

    def __init__(self, path: Path, pts: np.ndarray) -> None:
        super().__init__(path, self._index)
        self.pts = pts

    def _index(self, frame) -> int:
        if frame.time is None or not np.isfinite(self.pts).all():
            return self.position + 1
        half = 0.5 / float(self.stream.average_rate or 30)
        return int(np.searchsorted(self.pts, frame.time - half))

    def time_of(self, index: int) -> float:
        return float(self.pts[index]) if np.isfinite(self.pts[index]) else 0.0


class _Proxy:
    """The review copy of a video (`veil.engine.review_copy`), made once in a thread for a video whose job made
    none; its files are usable as each is written."""

    def __init__(self, path: Path, frames: int, workdir: Path) -> None:
        self.path, self.frames, self.ready = path, frames, 0  # frames of the finished files
        self.dir = Path(tempfile.mkdtemp(prefix="proxy-", dir=workdir))
        self.done, self._stop = threading.Event(), False
        threading.Thread(target=self._make, daemon=True, name="veil-review-copy").start()

    def locate(self, index: int) -> tuple[Path, int] | None:
        """(file, frame in it) of frame `index` once its file is written, else None."""
        number, at = locate(index)
        return (self.dir / part_name(number), at) if index < self.ready else None

    def _make(self) -> None:
        import av

        writer = ReviewCopyWriter(self.dir, on_part=self._ready)
        try:
            with av.open(str(self.path)) as src:
                stream = src.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in src.decode(stream):
                    if self._stop or writer.frames >= self.frames:
                        break
                    writer.add(frame)
            if not self._stop:
                writer.finish()
        except Exception as exc:  # noqa: BLE001 - frames keep coming from the video itself
            log.warning("review copy of %s stopped: %s", self.path.name, exc)
        finally:
            writer.abort()
            self.done.set()
            if self._stop:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _ready(self, number: int, path: Path, frames: int) -> None:
        self.ready = frames

    def close(self) -> None:
        self._stop = True
        if self.done.is_set():
            shutil.rmtree(self.dir, ignore_errors=True)


class FrameServer:
    def __init__(self, videos: int = 4, frames: int = 512, copies: int = 2, review_copies: bool = True) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="veil-frames-"))
        self._decoders = Bounded(videos + 2 * copies, on_drop=lambda d: d.close())
        self._proxies = Bounded(copies, on_drop=lambda p: p.close())
        self._jpegs, self._spacing = Bounded(frames), Bounded(64)
        self.review_copies = review_copies

    def jpeg(
        self,
        path: Path,
        pts: np.ndarray,
        index: int,
        side: int = REVIEW_SIDE,
        copy: bool = True,
        stored: Callable[[int], Path] | None = None,
    ) -> bytes:
        """Frame `index` of the video at `path` (`pts`: its frames' times), its long side at most `side`: from
        the review copy the job stored (`stored(n)`: its file n, as a local path), else from the video's review
        copy made here once it holds the frame (`copy`: make one, if there is none yet), else from the video."""

        def make() -> bytes:
            frame = self._frame(path, pts, index, copy, stored)
            image = frame.to_image()
            image.thumbnail((side, side))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=82)
            return out.getvalue()

        return self._jpegs.get_or_make((str(path), index, side), make)

    def review_copy(self, path: Path, frames: int) -> _Proxy:
        return self._proxies.get_or_make(str(path), lambda: _Proxy(path, frames, self._dir))

    def _frame(self, path: Path, pts: np.ndarray, index: int, copy: bool, stored: Callable[[int], Path] | None):
        if index >= len(pts):
            raise IndexError(f"frame {index}: past the end of the video")
        found: tuple[Path, int] | None = None
        if stored is not None:
            number, at = locate(index)
            found = stored(number), at
        else:
            wanted = copy and self.review_copies and self._spacing.get_or_make(str(path), lambda: worth_copying(path))
            made = self.review_copy(path, len(pts)) if wanted else self._proxies.get(str(path))
            found = made.locate(index) if made is not None else None
        if found is not None:
            part, at = found
            key, make = str(part), lambda: _Decoder(part, copy_index)
        else:
            key, at, make = str(path), index, lambda: _Source(path, pts)
        for _ in range(3):
            try:
                return self._decoders.get_or_make(key, make).frame(at)
            except _Closed:  # another request's decoder took its place: open it again
                continue
        raise IndexError(f"frame {index}: the decoders are too busy")
