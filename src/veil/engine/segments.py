"""Long videos in segments: plan cuts, anonymize each segment on its own, stitch without re-encoding.

* **Plan** (`plan_segments`): the video stream's packets are demuxed, not decoded. Cuts fall near every
  multiple of the segment length, on a source keyframe when one is within a quarter segment, else on the
  nearest frame (the output is re-encoded anyway: every segment starts with an IDR frame of its own). A
  video shorter than 1.5 segments is not split.
* **Segment** (`run_segment`): the video pipeline (`veil.engine.video`) decodes from the keyframe at or
  before the segment's warm-up, runs detection and tracking from `warm` to `stop` with the same frame
  indices as the unsplit run (so the detector's schedule is the same), and encodes only the frames with
  start <= pts < end into a video-only file, with the encoder settings of the unsplit run. The overlaps
  come from the tracker's parameters: after the segment its look-ahead (`horizon`), before it the
  longest trail from an earlier detection, the gap bridged, the motion gate's memory of scans and a
  margin, so boxes near a cut are those of an unsplit run. The number of segments is bounded (`MAX_SEGMENTS`,
  and the overlaps' extra work against the frames written: `max_overhead`), so a file whose few frames are
  spread over hours is not split into hundreds of segments that analyse more than they write.
* **Stitch** (`stitch`): the segments' packets are copied in order into the output container (the
  decode timestamps kept increasing across the joins), interleaved with the source's audio, copied
  whole as in an unsplit run, with the same display matrix and language tags. The report is the
  segments' frames in order.

`anonymize_split` runs the segments in worker processes of its own (`veil anonymize --jobs N`); the
service fans them out itself (`veil.jobs.segments`).
"""

from __future__ import annotations

import bisect
import heapq
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from fractions import Fraction
from pathlib import Path

import av

from .config import MediaLimits, ModelConfig
from .detections import Detections
from .errors import MediaError
from .report import Report
from .video import Pipeline, anonymize_video, detect_plan
from .video_source import Segment, open_source
from .video_writer import FORMATS, VideoWriter, output_format

Progress = Callable[[float], None]
_NEVER = 2**62  # "end" / "stop" of the last segment
SEGMENT_SUFFIX = ".mp4"  # segment files: H.264 in MP4 (the source's time base, exact pts)
MAX_SEGMENTS = 256  # a video is never split further (4 h at the default 60 s; longer videos get longer segments)


def plan_segments(
    src: Path,
    config: ModelConfig,
    seconds: float,
    limits: MediaLimits = MediaLimits(),
    dst: Path | None = None,
    max_overhead: float | None = None,
) -> list[Segment]:
    """The segments of `src` (one covering everything when it is not split: short, an output format
    other than MP4/MOV/Matroska, or packets without timestamps). At most `MAX_SEGMENTS`, and with
    `max_overhead`, so few that the frames their overlaps analyse twice stay within that fraction of the
    video's frames (fewer, longer segments than `seconds` then)."""
    source = open_source(Path(src), limits)
    try:
        video = source.video
        fmt = FORMATS.get(Path(dst).suffix.lower()) if dst is not None else None
        fmt = fmt or output_format(source)
        tb = video.time_base  # read before the container closes (the stream is freed with it)
        packets = [(p.pts, p.dts, p.is_keyframe) for p in source.container.demux(video) if p.size]
    except av.error.FFmpegError as exc:
        raise MediaError(f"{Path(src).name}: corrupt or truncated video ({exc})") from None
    finally:
        source.container.close()
    whole = [Segment(0, 0, 0, 0, 0, 0, _NEVER, _NEVER, len(packets), len(packets))]
    pts = sorted(p for p, _, _ in packets if p is not None)
    if (
        seconds <= 0
        or fmt not in ("mp4", "mov", "matroska")
        or len(pts) != len(packets)
        or len(pts) < 2
        or len(set(pts)) != len(pts)
        or not source.fps
        or not tb
    ):
        return whole
    length = float((pts[-1] - pts[0]) * tb)
    if length < 1.5 * seconds:
        return whole
    # Matroska: no dts, seek by pts (every pts is there: len(pts) == len(packets))
    keys = sorted((p, p if d is None else d) for p, d, k in packets if k and p is not None)
    if not keys or keys[0][0] != pts[0]:
        return whole
    key_pts = [k[0] for k in keys]
    before, after = overlap_frames(config, (source.width, source.height), source.fps)
    count = min(int(length / seconds + 0.5), MAX_SEGMENTS)
    if max_overhead is not None:  # the overlaps' frames, count * (before + after), within max_overhead of all
        count = min(count, int(len(pts) * max_overhead / (before + after)))
    if count < 2:
        return whole
    seconds = length / count  # fewer, longer segments when the bounds above cut their number
    cuts = [0]  # frame indices
    for n in range(1, count):
        target = pts[0] + round(n * seconds / tb)
        cut = _nearest(key_pts, target)
        if abs(cut - target) * tb > seconds / 4:
            cut = _nearest(pts, target)
        index = bisect.bisect_left(pts, cut)
        if float((cut - pts[cuts[-1]]) * tb) >= seconds / 2 and float((pts[-1] - cut) * tb) >= seconds / 2:
            cuts.append(index)
    if len(cuts) < 2:
        return whole
    segments = []
    for n, first in enumerate(cuts):
        last = cuts[n + 1] if n + 1 < len(cuts) else len(pts)  # exclusive
        warm = max(0, first - before)
        stop = min(len(pts), last + after)
        k = bisect.bisect_right(key_pts, pts[warm]) - 1
        seek, seek_dts = keys[k]
        segments.append(
            Segment(
                n,
                seek,
                seek_dts,
                bisect.bisect_left(pts, seek),
                pts[warm],
                pts[first],
                pts[last] if last < len(pts) else _NEVER,
                pts[stop] if stop < len(pts) else _NEVER,
                last - first,
                stop - warm,
            )
        )
    return segments


def overlap_frames(config: ModelConfig, size: tuple[int, int], fps: float) -> tuple[int, int]:
    """Frames detected and tracked before a segment's first frame and after its last one, so that its
    boxes are those of the unsplit run: before, the longest trail of an earlier detection (at the frame
    edge) plus the bridged gap, smoothing and the velocity window of an extrapolation (10 frames), and
    four scan intervals (the motion gate's memory of three scans); after, the tracker's look-ahead.
    Both with half a second of margin."""
    planner, params, _ = detect_plan(config, size, fps, detect=lambda *a, **k: Detections())
    scan = planner.scan_interval if planner else 1
    margin = round(0.5 * fps)
    before = 4 * scan + params.edge_trail + params.max_gap + 2 * params.smooth + 10 + margin
    after = params.horizon + params.smooth + margin
    return before, after


def _nearest(values: list[int], target: int) -> int:
    """The value of `values` (sorted, not empty) nearest to `target`."""
    i = bisect.bisect_left(values, target)
    return min(values[max(0, i - 1) : i + 1], key=lambda v: abs(v - target))


def run_segment(
    src: Path,
    segment: Segment,
    dst: Path,
    config: ModelConfig,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
) -> Report:
    """Anonymize one segment of `src` into the video-only file `dst` (SEGMENT_SUFFIX); its report lists
    the segment's frames (indices and pts of the whole video)."""
    return Pipeline(Path(src), config, progress, limits=limits, segment=segment).run(Path(dst))


def detect_split(src: Path, config: ModelConfig, seconds: float, limits: MediaLimits = MediaLimits()) -> Report:
    """The boxes a split run redacts (`detect_video` segment by segment, in this process)."""
    reports = [
        Pipeline(Path(src), config, None, limits=limits, segment=s).run(None)
        for s in plan_segments(src, config, seconds, limits)
    ]
    report = reports[0]
    for part in reports[1:]:
        report.frames += part.frames
    report.figures.update({"frame_count": len(report.frames), "segments": len(reports)})
    return report


def stitch(
    src: Path,
    parts: list[Path],
    dst: Path,
    config: ModelConfig,
    limits: MediaLimits = MediaLimits(),
    reports: Sequence[Report] = (),
) -> Report:
    """Join the segment files `parts` (in order) into `dst` with the audio of `src`, no re-encoding; the
    report holds the segments' `reports` frames in order."""
    src, dst = Path(src), Path(dst)
    source = open_source(src, limits)
    report = Report(
        "video",
        source.width,
        source.height,
        figures=dict(reports[0].figures) if reports else {},
        notes=list(dict.fromkeys(n for r in reports for n in r.notes)),
    )
    for part in reports:
        report.frames += part.frames
    try:
        writer = VideoWriter(dst, source, config, report)
        try:
            with av.open(str(parts[0])) as first:
                frame = next(first.decode(first.streams.video[0]))
                writer.copy_video(first.streams.video[0], frame)
                extradata = first.streams.video[0].codec_context.extradata
            for _, kind, packet in heapq.merge(
                _video_packets(parts, extradata, source.time_base), _audio_packets(source), key=lambda item: item[:2]
            ):
                if kind == 0:
                    writer.packet(packet)
                else:
                    writer.audio(packet)
        except BaseException:
            writer.abort()
            raise
        writer.finish()
    finally:
        source.container.close()
    report.figures.update(
        {
            "frame_count": len(report.frames),
            "fps": round(source.fps, 3),
            "seconds": round(source.duration or 0.0, 3),
            "segments": len(parts),
        }
    )
    return report


def _video_packets(parts: list[Path], extradata: bytes | None, tb: Fraction) -> Iterator[tuple[float, int, av.Packet]]:
    """The segments' packets in the source's time base, decode timestamps kept increasing across joins."""
    last = None
    for path in parts:
        with av.open(str(path)) as part:
            stream = part.streams.video[0]
            if stream.codec_context.extradata != extradata:
                raise MediaError(f"{path.name}: encoded with other settings than the first segment")
            for packet in part.demux(stream):
                if not packet.size:
                    continue
                if packet.pts is None or packet.dts is None:  # not in MP4 segments this module wrote
                    raise MediaError(f"{path.name}: cannot join the segment (a packet without timestamps)")
                scale = packet.time_base / tb
                pts, dts = round(packet.pts * scale), round(packet.dts * scale)
                if last is not None and dts <= last:
                    dts = last + 1
                if dts > pts:
                    raise MediaError(f"{path.name}: cannot join the segment (timestamps overlap)")
                last = dts
                packet.pts, packet.dts = pts, dts
                packet.duration = round(packet.duration * scale) if packet.duration else 0
                packet.time_base = tb
                yield float(dts * tb), 0, packet


def _audio_packets(source) -> Iterator[tuple[float, int, av.Packet]]:
    if not source.audio:
        return
    for packet in source.container.demux(source.audio):
        if packet.dts is not None and packet.size:
            yield float(packet.dts * packet.time_base), 1, packet


# ----------------------------------------------------------------------------- worker processes
_shared = None  # in a worker process: the progress array (one slot per segment, last slot: stop flag)


def _init_worker(shared) -> None:
    global _shared
    _shared = shared


def _segment_in_worker(src: str, segment: dict, dst: str, config: dict, limits: MediaLimits, shared=None) -> Report:
    seg = Segment(**segment)
    shared = _shared if shared is None else shared

    def tell(fraction: float) -> None:
        shared[seg.index] = fraction
        if shared[len(shared) - 1]:
            raise InterruptedError("stopped")

    return run_segment(Path(src), seg, Path(dst), ModelConfig(**config), tell, limits)


class SegmentPool:
    """Segments of one video run in `workers` spawned processes (each loads the models once, at its first
    segment), or threads of this process where it may not start processes (a daemonic one: a Celery
    worker's). Leaving the `with` block on an error stops the running segments at their next frame."""

    def __init__(self, workers: int, segments: int) -> None:
        self._threads = multiprocessing.current_process().daemon
        self._pool: Executor
        if self._threads:
            self._shared = [0.0] * (segments + 1)
            self._pool = ThreadPoolExecutor(max_workers=max(1, workers))
        else:
            ctx = multiprocessing.get_context("spawn")
            self._shared = ctx.Array("d", segments + 1, lock=False)
            self._pool = ProcessPoolExecutor(
                max_workers=max(1, workers), mp_context=ctx, initializer=_init_worker, initargs=(self._shared,)
            )

    def submit(
        self, src: Path, segment: Segment, dst: Path, config: ModelConfig, limits: MediaLimits = MediaLimits()
    ) -> Future:
        return self._pool.submit(
            _segment_in_worker,
            str(src),
            segment.to_json(),
            str(dst),
            config.model_dump(),
            limits,
            self._shared if self._threads else None,
        )

    def progress(self, index: int) -> float:
        return min(1.0, self._shared[index])

    def __enter__(self) -> SegmentPool:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self._shared[len(self._shared) - 1] = 1.0
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:
            self._pool.shutdown(wait=True)


def anonymize_split(
    src: Path,
    dst: Path,
    config: ModelConfig,
    seconds: float,
    jobs: int = 1,
    progress: Progress | None = None,
    limits: MediaLimits = MediaLimits(),
) -> Report:
    """`anonymize_video`, in segments of about `seconds` run by `jobs` worker processes."""
    src, dst = Path(src), Path(dst)
    segments = plan_segments(src, config, seconds, limits, dst)
    if len(segments) == 1:
        return anonymize_video(src, dst, config, progress, limits)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".segments", dir=dst.parent))
    parts = [work / f"{s.index:05d}{SEGMENT_SUFFIX}" for s in segments]
    told = 0.0
    try:
        with SegmentPool(jobs, len(segments)) as pool:
            futures = [pool.submit(src, s, p, config, limits) for s, p in zip(segments, parts)]
            while True:
                done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in done:
                    if (exc := future.exception()) is not None:
                        raise exc
                value = min(
                    0.99, sum(s.analysed * pool.progress(s.index) for s in segments) / sum(s.analysed for s in segments)
                )
                if progress is not None and value > told:
                    told = value
                    progress(value)
                if not pending:
                    break
            reports = [f.result() for f in futures]
        started = time.perf_counter()
        report = stitch(src, parts, dst, config, limits, reports)
        report.figures["stitch_seconds"] = round(time.perf_counter() - started, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress is not None:
        progress(1.0)
    return report
