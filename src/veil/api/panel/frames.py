"""A video's frames at review resolution, decoded on demand.

A camera or encoder may put a keyframe only every few hundred frames, and a frame far from where a decoder
stands is then up to that many decodes away (over a second for 1080p). So the first time the frames of such a
video (keyframes more than COPY_ABOVE frames apart) are asked for, a thread makes a review copy of it once
(`_Proxy`): the frames at review resolution, a keyframe every PROXY_KEY frames, in files of PROXY_CHUNK
frames usable as each is written. A frame the copy holds is at most PROXY_KEY small decodes away; until then
frames come from the video itself. Either way one open decoder per file steps forward to the next frames
asked for (a reviewer's usual move) and seeks to the keyframe before a frame it cannot reach by stepping (the
file's keyframe index says which). The JPEGs of the most recent frames are kept (bounded), and so are the
decoders and review copies of the most recent videos."""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from .review_data import Bounded

log = logging.getLogger(__name__)
REVIEW_SIDE = 960  # the long side of a frame at review resolution
STEP_LIMIT = 48  # frames decoded forward before a seek is cheaper (a file without a keyframe index)
SKIP_UNTIL = 16  # after a seek, frames nothing refers to are skipped up to this many frames before the target
PROXY_KEY, PROXY_CHUNK, PROXY_RATE = 15, 600, 25  # the review copy: a keyframe every 15 frames, 600 to a file
PROXY_X264 = {"preset": "veryfast", "crf": "21", "g": str(PROXY_KEY), "bf": "0"}
COPY_ABOVE = 60  # keyframes at most this many frames apart: frames from the video itself are quick enough


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
        return index / PROXY_RATE

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
    """The review copy of a video, made once in a thread: frame i is frame i % PROXY_CHUNK of file
    i // PROXY_CHUNK (PROXY_RATE frames a second whatever the video's rate: only the numbers matter)."""

    def __init__(self, path: Path, frames: int, workdir: Path) -> None:
        self.path, self.frames, self.ready = path, frames, 0  # frames of the finished files
        self.dir = Path(tempfile.mkdtemp(prefix="proxy-", dir=workdir))
        self.done, self._stop = threading.Event(), False
        threading.Thread(target=self._make, daemon=True, name="veil-review-copy").start()

    def locate(self, index: int) -> tuple[Path, int] | None:
        """(file, frame in it) of frame `index` once its file is written, else None."""
        return (self.dir / f"{index // PROXY_CHUNK}.mp4", index % PROXY_CHUNK) if index < self.ready else None

    def _make(self) -> None:
        import av

        try:
            with av.open(str(self.path)) as src:
                stream = src.streams.video[0]
                stream.thread_type = "AUTO"
                out, n = None, 0
                for frame in src.decode(stream):
                    if self._stop or n >= self.frames:
                        break
                    if n % PROXY_CHUNK == 0:
                        self._finish(out, n)
                        out, video = self._open(n // PROXY_CHUNK, frame)
                    small = frame.reformat(width=video.width, height=video.height, format="yuv420p")
                    small.pts, small.time_base = n % PROXY_CHUNK, Fraction(1, PROXY_RATE)
                    out[0].mux(video.encode(small))
                    n += 1
                if self._stop and out:
                    out[0].close()
                elif not self._stop:
                    self._finish(out, n)
        except Exception as exc:  # noqa: BLE001 - frames keep coming from the video itself
            log.warning("review copy of %s stopped: %s", self.path.name, exc)
        finally:
            self.done.set()
            if self._stop:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self, number: int, frame):
        import av

        scale = min(1.0, REVIEW_SIDE / max(frame.width, frame.height))
        tmp = self.dir / f"{number}.part.mp4"
        out = av.open(str(tmp), "w")
        video = out.add_stream("libx264", rate=PROXY_RATE)
        video.width, video.height = (max(2, round(side * scale / 2) * 2) for side in (frame.width, frame.height))
        video.pix_fmt, video.codec_context.options = "yuv420p", dict(PROXY_X264)
        return (out, tmp, number), video

    def _finish(self, out, ready: int) -> None:
        if out is None:
            return
        container, tmp, number = out
        container.mux(container.streams.video[0].encode(None))
        container.close()
        tmp.rename(self.dir / f"{number}.mp4")
        self.ready = ready

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

    def jpeg(self, path: Path, pts: np.ndarray, index: int, side: int = REVIEW_SIDE, copy: bool = True) -> bytes:
        """Frame `index` of the video at `path` (`pts`: its frames' times), its long side at most `side`; from
        the video's review copy once it holds the frame (`copy`: make one, if there is none yet)."""

        def make() -> bytes:
            frame = self._frame(path, pts, index, copy)
            image = frame.to_image()
            image.thumbnail((side, side))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=82)
            return out.getvalue()

        return self._jpegs.get_or_make((str(path), index, side), make)

    def review_copy(self, path: Path, frames: int) -> _Proxy:
        return self._proxies.get_or_make(str(path), lambda: _Proxy(path, frames, self._dir))

    def _far_keys(self, path: Path, frames: int) -> bool:
        """Whether the video's keyframes lie more than COPY_ABOVE frames apart (or its container does not say
        where they are): only then is a review copy worth making."""

        def measure() -> bool:
            import av

            with av.open(str(path)) as container:
                keys = [i for i, e in enumerate(container.streams.video[0].index_entries) if e.is_keyframe]
            return not keys or int(np.diff([*keys, frames]).max()) > COPY_ABOVE

        return self._spacing.get_or_make(str(path), measure)

    def _frame(self, path: Path, pts: np.ndarray, index: int, copy: bool):
        if index >= len(pts):
            raise IndexError(f"frame {index}: past the end of the video")
        wanted = copy and self.review_copies and self._far_keys(path, len(pts))
        made = self.review_copy(path, len(pts)) if wanted else self._proxies.get(str(path))
        found = made.locate(index) if made is not None else None
        if found is not None:
            part, at = found
            key, make = str(part), lambda: _Decoder(part, _proxy_index)
        else:
            key, at, make = str(path), index, lambda: _Source(path, pts)
        for _ in range(3):
            try:
                return self._decoders.get_or_make(key, make).frame(at)
            except _Closed:  # another request's decoder took its place: open it again
                continue
        raise IndexError(f"frame {index}: the decoders are too busy")


def _proxy_index(frame) -> int:
    return round(frame.pts * frame.time_base * PROXY_RATE)
