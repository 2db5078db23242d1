"""Video anonymization: faithful re-encoding with tracked, flicker-free redaction.

Pipeline (three threads, bounded queues, so memory does not grow with the video's length):

    read: demux + decode ──▶ detect + track (look-ahead) ──▶ redact + encode + mux

* **Faithful output.** Same resolution, frame count and timestamps (variable frame rate kept: each
  frame keeps its pts in the source's time base), rotation (the display matrix is copied), audio
  streams copied packet for packet (re-encoded only when the output container cannot hold the
  codec, and then the report says so). Subtitle, data and attachment streams are dropped, as is
  all container and stream metadata except the language tag: they may hold identifying text or a
  GPS location. Video is H.264 (libx264, yuv420p, CRF `config.video_crf`); WebM cannot hold H.264,
  so `.webm` outputs get VP9. 10-bit and HEVC sources are decoded and written as 8-bit H.264
  (`veil.engine.video_writer`).
* **No flashes.** Faces (`face_track`, a Veil extension, default on) and plates (`lp_track`) are
  tracked (`veil.engine.tracking`): a track stays blurred through short gaps, a little before its
  first and after its last detection, and while it leaves the frame; boxes are smoothed.
* **Speed.** What the detectors look at, and when, is planned by `veil.engine.video_detect`
  (scans of the frame a few times a second, crops around live tracks in between, motion gating);
  the tracker interpolates the frames in between. Frames stay in YUV; only the region around each
  detection is converted to RGB, redacted and written back (`veil.engine.video_redact`), so pixels
  outside the redaction mask are bit-identical to the decoded source. `VEIL_X264_PRESET`
  (veryfast) sets the encoder's preset. Long videos may be split (`veil.engine.segments`).
* **Odd inputs.** Frames whose picture size differs from the first frame's (two recordings joined)
  are scaled to the first size; timestamps that put frames closer than `video_source.MAX_FPS` allows (38
  frames within 3 ms) are broken: the detect stage is then scheduled by frame counts, as at
  `video_source.NOMINAL_FPS`. Either is said in the report's notes.
* **Errors.** Unreadable, corrupt or truncated input raises `MediaError` with a plain message; the
  output is written to a temporary file in the destination folder and renamed only on success.

Boxes in reports are in pixels of the stored (coded) frame, before any display rotation; the
report's `figures["rotation"]` gives the display rotation in degrees counter-clockwise.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from .config import MediaLimits, ModelConfig
from .detections import FACE, PLATE, Detections
from .document import normalized
from .errors import MediaError
from .report import FrameDetections, Report
from .tracking import TrackingParams, VideoTracker
from .video_detect import DetectFn, FrameDetector, default_detect
from .video_redact import copy_frame_props
from .video_source import Segment, Source, av_reason, open_source
from .video_writer import VideoWriter

log = logging.getLogger(__name__)

Progress = Callable[[float], None]

_QUEUE = 8
_NO_LIMIT = 2**62
_END = object()
_EMPTY = Detections(track_ids=np.zeros(0, np.int64))


def anonymize_video(
    src: Path,
    dst: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
    record: Recorder | None = None,
) -> Report:
    """Anonymize the video `src` into `dst` (container chosen by dst's suffix, else the source's)."""
    return Pipeline(Path(src), config, progress, limits=limits, record=record).run(Path(dst))


def detect_video(
    src: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
    record: Recorder | None = None,
    copy: Callable[[av.VideoFrame], None] | None = None,
) -> Report:
    """Detections of every frame of `src` (tracked, with track ids), without writing a video; `copy` is
    handed every decoded frame in order (`veil.engine.review_copy`), on the thread that would encode."""
    return Pipeline(Path(src), config, progress, limits=limits, record=record, copy=copy).run(None)


def render_video(
    src: Path,
    dst: Path,
    config: ModelConfig,
    plan: PlanFn,
    extra: Callable[[int], Detections],
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
) -> Report:
    """`src` anonymized into `dst` with no detector: `plan` hands the tracker each frame's candidates
    (`veil.engine.render`), `extra` adds boxes to a frame's final ones."""
    return Pipeline(Path(src), config, progress, limits=limits, plan=plan, extra=extra).run(Path(dst))


# ----------------------------------------------------------------------------- the job
class Pipeline:
    """One run of the pipeline over a whole video, or over one `Segment` of it (`veil.engine.segments`):
    then decoding starts at the segment's keyframe, the detect stage starts a little before the segment
    and ends a little after it (the tracker's look-ahead and warm-up), and only the segment's own frames
    are reported and written (video only)."""

    def __init__(
        self,
        src: Path,
        config: ModelConfig,
        progress: Progress | None,
        detect: DetectFn | None = None,
        limits: MediaLimits = MediaLimits(),
        segment: Segment | None = None,
        plan: PlanFn | None = None,
        record: Recorder | None = None,
        extra: Callable[[int], Detections] | None = None,
        copy: Callable[[av.VideoFrame], None] | None = None,
    ) -> None:
        self.src, self.config, self.progress, self.limits = src, config, progress, limits
        self._detect = detect
        self.segment = segment
        # Rendering from a detections document (`veil.engine.render`): `plan` replaces the detectors and
        # their schedule, `extra` adds reviewer boxes to a frame's final ones; `record` is told the plan, then
        # every frame's candidates (None where no detector ran) as they leave the detect stage.
        self._plan = plan or (
            lambda source: detect_plan(config, (source.width, source.height), source.fps, self._detect)
        )
        self._record, self._extra, self._copy = record, extra, copy
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.analysed = 0  # frames through the detect stage (progress is told from it)

    # -- public entry
    def run(self, dst: Path | None) -> Report:
        source = open_source(self.src, self.limits)
        if dst is None or self.segment is not None:
            source.audio = []  # detection only, or a segment: its audio is copied whole at the stitch
            source.dropped = []
        try:
            return self._run(source, dst)
        finally:
            source.container.close()

    def _run(self, source: Source, dst: Path | None) -> Report:
        config = self.config
        plan = self._plan(source)
        planner, params, tracked = plan
        if self._record is not None:
            self._record.start(source, plan)
        stride = planner.stride if planner else 1
        tracker = VideoTracker(
            params, (source.width, source.height), {FACE: config.blur_threshold, PLATE: config.lp_threshold}, tracked
        )
        report = Report("video", source.width, source.height)
        writer = VideoWriter(dst, source, config, report) if dst is not None else None
        q_read: queue.Queue = queue.Queue(_QUEUE)
        q_out: queue.Queue = queue.Queue(_QUEUE)
        threads = [
            threading.Thread(target=self._guard, args=(self._read, source, q_read), daemon=True),
            threading.Thread(target=self._guard, args=(self._analyse, q_read, q_out, plan, tracker), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self._consume(q_out, source, report, writer)
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._stop.set()
            for t in threads:
                t.join()
        if self._error is not None:
            if writer is not None:
                writer.abort()
            if isinstance(self._error, MediaError):
                raise self._error
            if isinstance(self._error, av.error.FFmpegError) and not _machine_fault(self._error):
                raise MediaError(f"{self.src.name}: cannot process this video: {self._error}") from self._error
            raise self._error
        if writer is not None:
            writer.finish()
        report.notes += source.notes
        report.figures.update(
            {
                "frame_count": len(report.frames),
                "fps": round(source.fps, 3),
                "seconds": round(source.duration or 0.0, 3),
                "detect_stride": stride,
            }
        )
        if self.progress:
            self.progress(1.0)
        return report

    # -- thread helpers
    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._stop.set()

    def _put(self, q: queue.Queue, item) -> None:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _get(self, q: queue.Queue, idle: Callable[[], None] | None = None):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None
                if idle is not None:
                    idle()

    # -- stage 1: demux and decode
    def _read(self, source: Source, q: queue.Queue) -> None:
        try:
            for kind, item in _decode(source, self.src, self.limits, self.segment):
                self._put(q, (kind, item))
        except _Stopped:
            return
        self._put(q, _END)

    # -- stage 2: detect and track
    def _analyse(self, q_in: queue.Queue, q_out: queue.Queue, plan: Plan, tracker: VideoTracker) -> None:
        planner = plan[0]
        pending: deque = deque()  # frames and audio packets waiting for their boxes, in stream order
        finals: dict[int, Detections] = {}
        try:
            while True:
                item = self._get(q_in)
                if item is _END:
                    break
                kind, payload = item
                if kind != "frame":
                    pending.append((kind, payload))
                    continue
                index, frame = payload
                dets = planner(index, frame, partial(tracker.predict, index)) if planner else None
                dets = None if dets is None else normalized(dets)  # as a document keeps them: renders draw the same
                if self._record is not None:
                    self._record.frame(index, None if frame.time is None else round(frame.time, 6), dets)
                pending.append(("frame", (index, frame)))
                finals.update(tracker.push(index, dets))
                self.analysed += 1
                self._drain(pending, finals, q_out)
            finals.update(tracker.flush())
            self._drain(pending, finals, q_out)
            self._put(q_out, _END)
        except _Stopped:
            return

    def _drain(self, pending: deque, finals: dict[int, Detections], q_out: queue.Queue) -> None:
        while pending:
            kind, payload = pending[0]
            if kind == "frame":
                index, frame = payload
                if index not in finals:
                    return
                dets = finals.pop(index)
                if self._extra is not None:
                    dets = Detections.concat([dets, self._extra(index)])
                payload = (index, frame, dets)
            pending.popleft()
            self._put(q_out, (kind, payload))

    # -- stage 3: redact, encode, mux (main thread)
    def _consume(self, q: queue.Queue, source: Source, report: Report, writer: VideoWriter | None) -> None:
        segment = self.segment
        if segment is not None:
            total = segment.analysed
        else:
            total = source.expected_frames or (round(source.duration * source.fps) if source.duration else 0)
        told = 0.0

        def tell() -> None:
            # From the detect stage, the slow one: frames leave the last stage only after the tracker's
            # look-ahead, which on a short high-resolution clip can be most of it. Called on this
            # thread only (the callback may write to a database or raise to cancel the job).
            nonlocal told
            value = min(0.99, self.analysed / total) if total else 0.0
            if self.progress and value > told:
                told = value
                self.progress(value)

        while True:
            item = self._get(q, tell)
            if item is _END:
                break
            kind, payload = item
            if writer is None:
                if kind != "frame":
                    continue
            elif kind != "frame":
                writer.audio(payload)
                continue
            index, frame, dets = payload
            if segment is not None and not segment.start <= frame.pts < segment.end:
                continue  # warm-up or look-ahead: another segment's frame
            report.frames.append(
                FrameDetections(
                    index, None if frame.time is None else round(frame.time, 6), dets if len(dets) else _EMPTY
                )
            )
            if writer is not None:
                writer.video(frame, dets)
            if self._copy is not None:
                self._copy(frame)
            tell()
        if segment is not None:
            if len(report.frames) != segment.frames:
                raise MediaError(
                    f"{self.src.name}: segment {segment.index} decoded {len(report.frames)} "
                    f"frames, {segment.frames} expected (corrupt video?)"
                )
        else:
            _check_complete(source, report, self.src)


class _Stopped(Exception):
    """A stage noticed that another one failed."""


Plan = tuple[
    "FrameDetector | None", TrackingParams, set[int]
]  # planner (None: nothing to find), tracking, tracked kinds
PlanFn = Callable[[Source], Plan]


class Recorder(Protocol):
    """Sees what the detect stage found (`veil.engine.render.VideoDocument` writes it to a document)."""

    def start(self, source: Source, plan: Plan) -> None: ...

    def frame(self, index: int, pts: float | None, candidates: Detections | None) -> None: ...


def detect_plan(config: ModelConfig, size: tuple[int, int], fps: float, detect: DetectFn | None = None) -> Plan:
    """The detect stage's planner (None when nothing is to be found), the tracker's parameters and the
    tracked kinds, for a video of `size` at `fps`."""
    kinds = frozenset(k for k, on in ((FACE, config.wants_faces), (PLATE, config.wants_plates)) if on)
    tracked = {k for k in kinds if (k == FACE and config.face_track) or (k == PLATE and config.lp_track)}
    detect = detect or (default_detect(config) if kinds else None)
    planner = FrameDetector(detect, config, size, fps, kinds, tracked) if detect is not None and kinds else None
    stride = planner.stride if planner else 1  # the longest gap the tracker must bridge
    scan = planner.scan_interval if planner else 1  # ... and the longest a new object waits
    return planner, TrackingParams.for_rate(fps, stride, scan), tracked


def _decode(
    source: Source, src: Path, limits: MediaLimits, segment: Segment | None = None
) -> Iterator[tuple[str, object]]:
    """Video frames and audio packets in stream order: ("frame", (index, VideoFrame)) / ("packet", Packet).
    For a segment: from its keyframe on (frame indices counted from the keyframe's), only the frames of
    its analysed span [warm, stop). MediaError past `limits.max_video_frames` (what the video was priced for)."""
    streams = [source.video, *source.audio]
    last_pts = None
    index = 0
    limit = limits.max_video_frames or _NO_LIMIT
    try:
        if segment is not None:
            index = segment.seek_index
            source.container.seek(segment.seek_dts, backward=True, any_frame=False, stream=source.video)
        for packet in source.container.demux(streams):
            if packet.stream is source.video:
                for frame in source.video.decode(packet):  # what packet.decode() calls, typed as video frames
                    if index >= limit:
                        raise MediaError(
                            f"{src.name}: the video holds more than the {limit} frames it was "
                            "priced for; nothing past them was processed"
                        )
                    if segment is not None:
                        if frame.pts is None or frame.pts < segment.seek:
                            continue  # before the keyframe (the seek landed earlier, or open-GOP leading)
                        if frame.pts >= segment.stop:
                            return
                    if (frame.width, frame.height) != (source.width, source.height):
                        frame = _first_size(frame, index, source)
                    last_pts = pts = _fix_pts(frame, last_pts, source)  # now frame.pts
                    if segment is None or pts >= segment.warm:
                        yield "frame", (index, frame)
                    index += 1
            elif packet.dts is not None and packet.size:
                yield "packet", packet
    except av.error.FFmpegError as exc:
        raise MediaError(f"{src.name}: corrupt or truncated video ({av_reason(exc)})") from None


def _first_size(frame: av.VideoFrame, index: int, source: Source) -> av.VideoFrame:
    """`frame` scaled to the video's first picture size (the encoder, tracker and boxes keep one size)."""
    if not any(note.startswith("the picture size changes") for note in source.notes):
        source.notes.append(
            f"the picture size changes at frame {index} ({frame.width} x {frame.height}, first "
            f"{source.width} x {source.height}): frames of another size were scaled to the first"
        )
    scaled = frame.reformat(width=source.width, height=source.height)
    copy_frame_props(frame, scaled)
    return scaled


def _fix_pts(frame: av.VideoFrame, last_pts: int | None, source: Source) -> int:
    """Give every frame a strictly increasing pts (a few files lack some); returns it."""
    step = 1
    if source.fps and source.video.time_base:
        step = max(1, round(1 / (source.fps * source.video.time_base)))
    pts = frame.pts
    if pts is None:
        pts = 0 if last_pts is None else last_pts + step
    elif last_pts is not None and pts <= last_pts:
        pts = last_pts + 1
    frame.pts = pts
    frame.time_base = source.video.time_base
    return pts


def _check_complete(source: Source, report: Report, src: Path) -> None:
    """Fail rather than silently write a short video when the input ends early."""
    got = len(report.frames)
    if got == 0:
        raise MediaError(f"{src.name}: no video frame could be decoded (corrupt or truncated file)")
    if source.expected_frames and got < source.expected_frames:
        raise MediaError(f"{src.name}: truncated or corrupt video: decoded {got} of {source.expected_frames} frames")
    last = report.frames[-1].pts
    if not source.expected_frames and source.duration and last is not None and source.fps:
        missing = source.duration - (last + 1 / source.fps)
        if missing > max(1.0, 5 / source.fps):
            raise MediaError(
                f"{src.name}: truncated or corrupt video: frames end at {last:.2f} s of {source.duration:.2f} s"
            )


def _machine_fault(exc: BaseException) -> bool:
    """An error of this machine (its disk full, failing or read-only), not of the video: raised as it is."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
