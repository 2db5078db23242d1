"""A video's source (its container and streams, checked) and a segment's window of it: what the pipeline
(`veil.engine.video`), the writer (`veil.engine.video_writer`), segments (`veil.engine.segments`) and probing
(`veil.engine.probe`) share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from .config import MediaLimits
from .errors import MediaError

MAX_FPS = 300.0  # above any real-time capture rate but slow-motion sensors', which files store slowed down
NOMINAL_FPS = 30.0  # the rate detection is scheduled at when timestamps are broken


@dataclass
class Source:
    container: av.container.InputContainer
    video: av.video.stream.VideoStream
    audio: list[av.audio.stream.AudioStream]
    width: int
    height: int
    fps: float
    expected_frames: int  # from the container index, 0 if unknown
    duration: float | None  # seconds, None if unknown
    dropped: list[str] = field(default_factory=list)  # streams not carried over
    notes: list[str] = field(default_factory=list)  # for the report: broken timestamps, a size change

    @property
    def time_base(self) -> Fraction:
        """The video stream's time base. PyAV reads a 0/0 one as None; FFmpeg gives every demuxed stream one
        (1/90000 unless its demuxer sets another), so None means a file FFmpeg should not have opened."""
        time_base = self.video.time_base
        if time_base is None:
            raise MediaError(f"{Path(self.container.name).name}: the video stream has no time base (corrupt file?)")
        return time_base


@dataclass(frozen=True)
class Segment:
    """One segment of a video: pts in the video stream's time base (JSON-able: `asdict` / `Segment(**d)`)."""

    index: int
    seek: int  # pts of the keyframe decoding starts at
    seek_dts: int  # ... its dts (where the demuxer seeks)
    seek_index: int  # ... its frame index in the whole video
    warm: int  # first frame detected and tracked (not written)
    start: int  # first frame written
    end: int  # first frame of the next segment
    stop: int  # first frame not decoded
    frames: int  # frames written
    analysed: int  # frames detected and tracked (progress)

    def to_json(self) -> dict:
        return asdict(self)


def open_source(src: Path, limits: MediaLimits = MediaLimits()) -> Source:
    """The video's container and streams, checked (a video stream with a picture size within the limit);
    the caller closes `source.container`."""
    try:
        container = av.open(str(src), metadata_errors="replace")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(f"{src.name}: not a readable video ({av_reason(exc)})") from None
    try:
        videos = [
            s
            for s in container.streams.video
            if s.codec_context is not None and not s.disposition & av.stream.Disposition.attached_pic
        ]  # not cover art
        if not videos:
            raise MediaError(f"{src.name}: no video stream")
        video = videos[0]
        if video.codec_context.width <= 0 or video.codec_context.height <= 0:
            raise MediaError(f"{src.name}: the video stream has no picture size (corrupt header?)")
        width, height = video.codec_context.width, video.codec_context.height
        if width * height > limits.max_video_frame_pixels:
            raise MediaError(
                f"{src.name}: video frames too large: {width} x {height} pixels (at most "
                f"{limits.max_video_frame_pixels / 1e6:.3g} MP a frame)"
            )
        video.thread_type = "AUTO"
        audio = [s for s in container.streams.audio if s.codec_context is not None]
        dropped = [f"{s.type} stream #{s.index}" for s in container.streams if s is not video and s not in audio]
        rate = video.average_rate or video.guessed_rate or video.base_rate
        fps, notes = float(rate) if rate else 0.0, []
        if fps > MAX_FPS:
            notes.append(
                f"broken timestamps ({fps:.0f} frames a second by them): detection was scheduled by "
                f"frame counts, as at {NOMINAL_FPS:.0f} frames a second"
            )
            fps = NOMINAL_FPS
        duration = None
        if video.duration is not None and video.time_base:
            duration = float(video.duration * video.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        return Source(
            container,
            video,
            audio,
            video.codec_context.width,
            video.codec_context.height,
            fps,
            int(video.frames or 0),
            duration,
            dropped,
            notes,
        )
    except MediaError:
        container.close()
        raise


def av_reason(exc: BaseException) -> str:
    """The gist of a PyAV/FFmpeg error, without the file name FFmpeg appends."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if ": '" in text else text
