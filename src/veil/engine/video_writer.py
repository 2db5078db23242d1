"""Video output: encodes (H.264, VP9 for WebM) and muxes into a temporary file next to the destination,
with the source's audio copied packet for packet, rotation and language tags; renamed only on success."""

from __future__ import annotations

import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np

from ..settings import engine_settings
from .config import ModelConfig
from .detections import Detections
from .report import Report
from .video_redact import copy_frame_props, redact_any, redact_yuv

if TYPE_CHECKING:
    from .video_source import Source

FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}


class VideoWriter:
    """Encodes and muxes into a temporary file next to `dst`; `finish` renames it, `abort` removes it."""

    def __init__(self, dst: Path, source: Source, config: ModelConfig, report: Report) -> None:
        self.dst, self.source, self.config, self.report = dst, source, config, report
        fmt = FORMATS.get(dst.suffix.lower()) or output_format(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part")
        self.fmt = fmt
        self.video_stream: av.video.stream.VideoStream | None = None
        self._encoder: av.video.stream.VideoStream | None = None  # the video stream, when this writer encodes it
        # source audio stream index -> (output stream, the source stream to decode when re-encoding, else None)
        self.audio_map: dict[int, tuple[av.audio.stream.AudioStream, av.audio.stream.AudioStream | None]] = {}
        self._early_audio: list[av.Packet] = []  # muxing starts once the video stream exists
        self.even = source.width % 2 == 0 and source.height % 2 == 0
        try:
            self.out = av.open(str(self.tmp), "w", format=fmt)
        except BaseException:
            discard(self.tmp)
            raise
        if source.dropped:
            report.notes.append("dropped (may hold identifying text): " + ", ".join(source.dropped))

    def _setup_audio(self) -> None:
        supported = self.out.supported_codecs
        for a in self.source.audio:
            name = a.codec_context.name
            if name in supported:
                stream = self.out.add_stream_from_template(a)
                self.audio_map[a.index] = (stream, None)
            else:
                codec: Literal["libopus", "aac"] = "libopus" if self.fmt == "webm" else "aac"
                stream = self.out.add_stream(codec, rate=a.codec_context.sample_rate or 48000)
                if a.codec_context.layout:
                    stream.layout = a.codec_context.layout
                a.codec_context.thread_type = "AUTO"
                self.audio_map[a.index] = (stream, a)
                self.report.notes.append(
                    f"audio stream #{a.index} ({name}) cannot be stored in {self.fmt}; re-encoded to {codec}"
                )
            stream.metadata.clear()
            if a.language:
                stream.metadata["language"] = a.language

    def _setup_video(self, first: av.VideoFrame) -> av.video.stream.VideoStream:
        """Encoding: an H.264 (VP9 for WebM) stream with the source's rate, time base and colours."""
        src = self.source.video
        codec: Literal["libvpx-vp9", "libx264"] = "libvpx-vp9" if self.fmt == "webm" else "libx264"
        rate = src.average_rate or src.guessed_rate or Fraction(30)
        stream = self.out.add_stream(codec, rate=rate)
        stream.width, stream.height = self.source.width, self.source.height
        stream.pix_fmt = "yuv420p" if self.even else "yuv444p"
        stream.time_base = stream.codec_context.time_base = self.source.time_base
        cc = stream.codec_context
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc"):
            try:
                setattr(cc, attr, getattr(src.codec_context, attr))
            except (AttributeError, ValueError, TypeError):
                pass
        if src.sample_aspect_ratio:
            cc.sample_aspect_ratio = src.sample_aspect_ratio
        crf = str(self.config.video_crf)
        if codec == "libx264":
            cc.options = {"crf": crf, "preset": engine_settings().x264_preset}
        else:
            cc.options = {"crf": crf, "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
            self.report.notes.append("WebM cannot hold H.264: video encoded as VP9")
        if not self.even:
            self.report.notes.append("odd picture size: video encoded as H.264 4:4:4")
        self._ready(stream, first)
        self._encoder = stream
        return stream

    def copy_video(self, template: av.video.stream.VideoStream, first: av.VideoFrame) -> None:
        """Stitching: the video stream takes `template`'s encoded packets as they are (`packet`);
        `first` (a decoded frame of it) carries the display matrix."""
        stream = self.out.add_stream_from_template(template)
        stream.time_base = self.source.video.time_base
        stream.metadata.clear()
        self._ready(stream, first)

    def _ready(self, stream: av.video.stream.VideoStream, first: av.VideoFrame) -> None:
        matrix = _display_matrix(first)
        if matrix is not None:
            stream.set_display_matrix(matrix)
            self.report.figures["rotation"] = first.rotation
        if self.source.video.language:
            stream.metadata["language"] = self.source.video.language
        self.video_stream = stream
        self._setup_audio()
        self.report.figures["audio"] = (
            ", ".join(
                "copied" if enc is None else f"re-encoded to {stream.codec_context.name}"
                for stream, enc in self.audio_map.values()
            )
            or "none"
        )
        for packet in self._early_audio:
            self.audio(packet)
        self._early_audio.clear()

    def packet(self, packet: av.Packet) -> None:
        """An encoded video packet (after `copy_video`), in the source's time base."""
        packet.stream = self.video_stream
        self.out.mux(packet)

    def video(self, frame: av.VideoFrame, dets: Detections) -> None:
        stream = self.video_stream
        if stream is None:
            stream = self._setup_video(frame)
        if frame.format.name not in ("yuv420p", "yuvj420p") and self.even:
            converted = frame.reformat(format="yuv420p")
            copy_frame_props(frame, converted)
            frame = converted
        if len(dets):
            frame = redact_yuv(frame, dets, self.config) if self.even else redact_any(frame, dets, self.config)
        self.out.mux(stream.encode(frame))

    def audio(self, packet: av.Packet) -> None:
        if self.video_stream is None:
            self._early_audio.append(packet)
            return
        stream, decoder = self.audio_map[packet.stream.index]
        if decoder is None:
            packet.stream = stream
            self.out.mux(packet)
            return
        for frame in decoder.decode(packet):  # what packet.decode() calls (decoder is packet.stream)
            frame.pts = None
            self.out.mux(stream.encode(frame))

    def finish(self) -> None:
        try:
            if self._encoder is not None:
                self.out.mux(self._encoder.encode(None))
            for stream, decoder in self.audio_map.values():
                if decoder is not None:
                    self.out.mux(stream.encode(None))
            self.out.close()
        except BaseException:
            self.abort()
            raise
        os.replace(self.tmp, self.dst)

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file goes anyway
            pass
        discard(self.tmp)


def discard(tmp: Path) -> None:
    """Remove a temporary file if it is there; a folder that cannot be written (the error being raised says
    so) must not replace that error with its own."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def output_format(source: Source) -> str:
    names = source.container.format.name.split(",")
    for name in ("mp4", "mov", "matroska", "webm", "avi"):
        if name in names:
            return name
    return "mp4"


def _display_matrix(frame: av.VideoFrame) -> list[int] | None:
    from av.sidedata.sidedata import Type

    try:
        # the stubs type side_data as a TypedDict of motion vectors only; it is a Mapping keyed by Type
        data = bytes(frame.side_data[Type.DISPLAYMATRIX])  # type: ignore[typeddict-item]
    except (KeyError, TypeError, IndexError):
        return None
    return np.frombuffer(data[:36], np.int32).tolist() if len(data) >= 36 else None
