"""A video's review copy: its frames at review resolution with a keyframe every COPY_KEY frames, in files of
COPY_CHUNK frames, so that a reviewer's jump to any frame is at most COPY_KEY small decodes away (a camera or
encoder may put keyframes hundreds of frames apart, and a frame far from a keyframe then costs seconds).

Frame i of the video is frame i % COPY_CHUNK of file i // COPY_CHUNK, its pts that number at COPY_RATE frames
a second (only the numbers matter). The worker writes one while it detects a job in review mode (its frames
are decoded then anyway); the admin panel writes one in a thread for a video reviewed without it."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

REVIEW_SIDE = 960  # the long side of a frame at review resolution
COPY_KEY, COPY_CHUNK, COPY_RATE = 15, 600, 25
COPY_X264 = {"preset": "veryfast", "crf": "23", "g": str(COPY_KEY), "bf": "0"}


def part_name(number: int) -> str:
    return f"{number}.mp4"


def locate(index: int) -> tuple[int, int]:
    """(file number, frame in that file) of frame `index`."""
    return index // COPY_CHUNK, index % COPY_CHUNK


def copy_index(frame: av.VideoFrame) -> int:
    """The number of a review copy's decoded frame within its file."""
    if frame.pts is None or frame.time_base is None:  # the copy's frames all have them (written above)
        raise ValueError("a review copy's frame without a timestamp")
    return round(frame.pts * frame.time_base * COPY_RATE)


class ReviewCopyWriter:
    """Writes the review copy into `folder` as frames are added in order; `on_part(number, path, frames)` is
    told each file once it is complete (`frames`: frames written so far). `abort()` leaves no file behind
    that was not told complete."""

    def __init__(self, folder: Path, on_part: Callable[[int, Path, int], None] | None = None) -> None:
        self.folder, self.on_part = Path(folder), on_part
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._out: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._tmp: Path | None = None

    def add(self, frame: av.VideoFrame) -> None:
        if self.frames % COPY_CHUNK == 0:
            self._finish_part()
            self._open(frame)
        assert self._out is not None and self._stream is not None
        small = frame.reformat(width=self._stream.width, height=self._stream.height, format="yuv420p")
        small.pts, small.time_base = self.frames % COPY_CHUNK, Fraction(1, COPY_RATE)
        self._out.mux(self._stream.encode(small))
        self.frames += 1

    def finish(self) -> list[Path]:
        """Completes the last file; the files in order."""
        self._finish_part()
        return [self.folder / part_name(n) for n in range(-(-self.frames // COPY_CHUNK))]

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._out = self._stream = self._tmp = None

    def _open(self, frame: av.VideoFrame) -> None:
        scale = min(1.0, REVIEW_SIDE / max(frame.width, frame.height))
        self._tmp = self.folder / f"{self.frames // COPY_CHUNK}.part.mp4"
        self._out = av.open(str(self._tmp), "w")
        stream = self._out.add_stream("libx264", rate=COPY_RATE)
        stream.width, stream.height = (max(2, round(side * scale / 2) * 2) for side in (frame.width, frame.height))
        stream.pix_fmt, stream.codec_context.options = "yuv420p", dict(COPY_X264)
        self._stream = stream

    def _finish_part(self) -> None:
        if self._out is None or self._stream is None or self._tmp is None:
            return
        self._out.mux(self._stream.encode(None))
        self._out.close()
        number = (self.frames - 1) // COPY_CHUNK
        done = self._tmp.rename(self.folder / part_name(number))
        self._out = self._stream = self._tmp = None
        if self.on_part is not None:
            self.on_part(number, done, self.frames)


COPY_ABOVE = 60  # keyframes at most this many frames apart: frames from the video itself are quick enough


def worth_copying(path: Path) -> bool:
    """Whether the video's keyframes lie more than COPY_ABOVE frames apart, or its container does not say
    where they are (only mp4 and mov list them): only then is a review copy worth making."""
    import numpy as np

    with av.open(str(path)) as container:
        entries = container.streams.video[0].index_entries
        keys = [i for i, e in enumerate(entries) if e.is_keyframe]
    return not keys or int(np.diff([*keys, len(entries)]).max()) > COPY_ABOVE
