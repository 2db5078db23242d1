"""Video path: faithful output (frames, timestamps, rotation, audio, metadata), errors, tracking, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.errors import MediaError
from veil.engine.video import Pipeline, anonymize_video, detect_video

NO_MODELS = ModelConfig(blur_face=False)  # I/O tests need no detector


# ----------------------------------------------------------------------------- clip makers
def make_clip(
    path: Path,
    *,
    frames: int = 45,
    size: tuple[int, int] = (160, 120),
    vfr: bool = False,
    rotation: int = 0,
    audio: bool = False,
    subtitle: bool = False,
    gps: bool = False,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: int = 30,
    faststart: bool = False,
    audio_codec: str = "aac",
) -> Path:
    """A small synthetic clip: a moving gradient, optionally VFR, rotated, with audio/subtitles/GPS."""
    w, h = size
    options = {"movflags": "+faststart"} if faststart else {}
    out = av.open(str(path), "w", container_options=options)
    if gps:
        out.metadata["location"] = "+48.8584+002.2945/"
        out.metadata["title"] = "private"
    vs = out.add_stream(codec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
    vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
    if codec == "libx265":
        vs.codec_context.options = {"log-level": "error"}
    if rotation:
        vs.set_display_rotation(rotation)
    a = out.add_stream(audio_codec, rate=8000) if audio else None
    sub_stream = sub_in = None
    if subtitle:
        srt = path.with_suffix(".srt")
        srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nJohn Smith, 12 Main St\n\n")
        sub_in = av.open(str(srt))
        sub_stream = out.add_stream_from_template(sub_in.streams[0])
    rng = np.random.default_rng(0)
    pts = apts = 0
    xs = np.arange(w)[None, :]
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = (xs + 3 * i) % 256
        img[..., 1] = np.arange(h)[:, None] * 2 % 256
        img[..., 2] = ((xs // 4 + np.arange(h)[:, None] // 4) % 2) * 200  # detail for blur checks
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = pts
        pts += (1000 // rate) if not vfr else (20, 33, 70)[i % 3]
        out.mux(vs.encode(f))
        while a is not None and apts < pts * 8:
            noise = rng.standard_normal((1, 1024)) * 0.1
            af = (
                av.AudioFrame.from_ndarray(noise.astype(np.float32), format="fltp", layout="mono")
                if audio_codec == "aac"
                else av.AudioFrame.from_ndarray((noise * 32767).astype(np.int16), format="s16", layout="mono")
            )
            af.sample_rate, af.pts = 8000, apts
            apts += 1024
            out.mux(a.encode(af))
    out.mux(vs.encode(None))
    if a is not None:
        out.mux(a.encode(None))
    if sub_in is not None:
        for p in sub_in.demux():
            if p.dts is not None:
                p.stream = sub_stream
                out.mux(p)
        sub_in.close()
    out.close()
    return path


def cut_clip(src: Path, dst: Path, seconds: float, start: float = 0.0, gop: int | None = None) -> Path:
    """`seconds` of a real clip from `start`: video re-encoded (near-lossless, a keyframe every `gop`
    frames if given), audio packets copied."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v_in = inp.streams.video[0]
        a_in = inp.streams.audio[0] if inp.streams.audio else None
        v_out = out.add_stream("libx264", rate=v_in.average_rate)
        v_out.width, v_out.height, v_out.pix_fmt = v_in.width, v_in.height, "yuv420p"
        v_out.time_base = v_out.codec_context.time_base = v_in.time_base
        v_out.codec_context.options = {"crf": "12", "preset": "ultrafast", **({"g": str(gop)} if gop else {})}
        a_out = out.add_stream_from_template(a_in) if a_in is not None else None
        offset = {v_in.index: round(start / v_in.time_base)}
        if a_in is not None:
            offset[a_in.index] = round(start / a_in.time_base)
        for packet in inp.demux([s for s in (v_in, a_in) if s is not None]):
            if packet.dts is None or packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if packet.stream is v_in:
                for frame in packet.decode():
                    if start <= frame.time < start + seconds:
                        frame.pts -= offset[v_in.index]
                        out.mux(v_out.encode(frame))
            elif start <= t < start + seconds:
                packet.pts -= offset[a_in.index]
                packet.dts -= offset[a_in.index]
                packet.stream = a_out
                out.mux(packet)
        out.mux(v_out.encode(None))
    return dst


def video_frames(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        return [(f.time, f.rotation) for f in c.decode(c.streams.video[0])]


def gray_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray") for f in c.decode(c.streams.video[0])]


def audio_packets(path: Path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(s) if p.dts is not None and p.size]


# ----------------------------------------------------------------------------- faithful output
def test_vfr_rotation_audio_metadata_subtitles(tmp_path):
    src = make_clip(tmp_path / "in.mkv", vfr=True, rotation=90, audio=True, subtitle=True, gps=True)
    dst = tmp_path / "out" / "in.mkv"
    report = anonymize_video(src, dst, NO_MODELS)

    before, after = video_frames(src), video_frames(dst)
    assert len(after) == len(before) == 45
    assert [round(t, 3) for t, _ in after] == [round(t, 3) for t, _ in before]  # VFR timestamps kept
    assert {r for _, r in after} == {90}  # display rotation copied
    assert audio_packets(dst) == audio_packets(src)  # audio copied packet for packet
    with av.open(str(dst)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]  # subtitle stream dropped
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert not {k.lower() for k in c.metadata} & {"location", "title"}
    assert report.figures["frame_count"] == 45 and report.figures["audio"] == "copied"
    assert any("subtitle" in n for n in report.notes)
    assert not list(dst.parent.glob(".*part"))  # no temp file left


def test_mp4_duration_and_gps_atom(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=30, audio=True, gps=True)
    dst = tmp_path / "out.mp4"
    anonymize_video(src, dst, NO_MODELS)
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        frame = 1 / 30
        assert abs(float(va.duration * va.time_base) - float(vb.duration * vb.time_base)) <= frame
        assert "location" not in {k.lower() for k in b.metadata}
    assert audio_packets(dst) == audio_packets(src)


def test_crf_changes_quality(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=20, size=(320, 240))
    lo, hi = tmp_path / "lo.mp4", tmp_path / "hi.mp4"
    anonymize_video(src, lo, NO_MODELS.model_copy(update={"video_crf": 40}))
    anonymize_video(src, hi, NO_MODELS.model_copy(update={"video_crf": 10}))
    assert hi.stat().st_size > lo.stat().st_size
    source = gray_frames(src)
    psnr = {p: np.mean([cv2.PSNR(a, b) for a, b in zip(source, gray_frames(p))]) for p in (lo, hi)}
    assert psnr[hi] > psnr[lo] + 5, psnr  # closer to the source, not only bigger


def test_hevc_10bit_source(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=20, codec="libx265", pix_fmt="yuv420p10le")
    dst = tmp_path / "out.mp4"
    anonymize_video(src, dst, NO_MODELS)
    assert len(video_frames(dst)) == 20
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_webm_output_is_vp9(tmp_path):
    src = make_clip(tmp_path / "in.mkv", frames=15)
    dst = tmp_path / "out.webm"
    report = anonymize_video(src, dst, NO_MODELS)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
    assert len(video_frames(dst)) == 15 and any("VP9" in n for n in report.notes)


# ----------------------------------------------------------------------------- bad input
def test_truncated_file_clear_error_and_no_output(tmp_path):
    good = make_clip(tmp_path / "good.mp4", frames=60, size=(320, 240), faststart=True)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    dst = tmp_path / "out" / "cut.mp4"
    with pytest.raises(MediaError, match="truncated"):
        anonymize_video(cut, dst, NO_MODELS)
    assert not dst.exists() and not list((tmp_path / "out").glob("*"))


def test_not_a_video_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(MediaError, match="bad.mp4"):
        anonymize_video(bad, tmp_path / "o.mp4", NO_MODELS)
    assert not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------- real clips, tracking
def test_real_clip_plates_are_found_tracked_and_blurred(shared_data, detection_models, tmp_path):
    """A parking lot (no faces): plates are reported on its frames, each with a track, and every reported
    plate box with texture in the source (Laplacian variance >= 50) keeps at most a quarter of it."""
    src = cut_clip(shared_data / "videos" / "intel_car-detection.mp4", tmp_path / "cars.mp4", 4.0, start=15.5)
    dst = tmp_path / "out.mp4"
    config = ModelConfig(enable_lp=True, lp_track=True)
    report = anonymize_video(src, dst, config)
    assert len(video_frames(dst)) == len(video_frames(src)) == report.figures["frame_count"]
    assert audio_packets(dst) == audio_packets(src)
    item = json.loads(json.dumps(report.to_json("cars.mp4")))
    assert len(item["frames"]) == len(report.frames)
    assert sum(len(f["plates"]) for f in item["frames"]) > 0  # the parking lot has readable plates
    assert all(len(f["plates"]) == len(f["plate_tracks"]) for f in item["frames"])
    before, after, textured = gray_frames(src), gray_frames(dst), 0
    for frame in report.frames:
        for x0, y0, x1, y1 in frame.detections.kind(PLATE).xyxy.astype(int):
            detail = [cv2.Laplacian(f[frame.index][y0:y1, x0:x1], cv2.CV_64F).var() for f in (before, after)]
            if detail[0] >= 50:
                textured += 1
                assert detail[1] <= 0.25 * detail[0], (frame.index, (x0, y0, x1, y1), detail)
    assert textured >= 20


def test_missed_detections_are_still_blurred(shared_data, detection_models, tmp_path):
    """Drop the detector's output on several frames: the tracker must keep the face blurred there."""
    from veil.engine.video_detect import default_detect as _default_detect

    src = cut_clip(shared_data / "videos" / "egoblur_gen1_test_video.mp4", tmp_path / "face.mp4", 1.5)
    config = ModelConfig()
    real = _default_detect(config)
    dropped = {2, 3}  # two detector runs in a row (16 frames at 30 fps)
    calls: list[int] = []

    def flaky(image, kinds):
        calls.append(0)
        dets = real(image, kinds)
        return Detections() if len(calls) - 1 in dropped else dets

    job = Pipeline(src, config, None, detect=flaky)
    report = job.run(tmp_path / "out.mp4")
    stride = report.figures["detect_stride"]
    missing = {i for i in range(len(report.frames)) if i // stride in dropped}
    assert missing, "the test must drop at least one frame"
    for frame in report.frames:
        faces = frame.detections.kind(FACE)
        assert len(faces) >= 1, f"frame {frame.index} has no face box (flash)"
    # The pixels of a bridged frame are really blurred: compare with the source around the face.
    index = sorted(missing)[len(missing) // 2]
    x1, y1, x2, y2 = report.frames[index].detections.kind(FACE).xyxy[0].astype(int)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)][index]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)][index]
    orig, out = fa[y1:y2, x1:x2].astype(float), fb[y1:y2, x1:x2].astype(float)
    detail = lambda img: np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean()  # noqa: E731
    assert detail(out) < 0.5 * detail(orig)


def test_detect_video_json(shared_data, detection_models, tmp_path):
    src = cut_clip(shared_data / "videos" / "egoblur_gen1_test_video.mp4", tmp_path / "face.mp4", 0.7)
    report = detect_video(src, ModelConfig())
    item = report.to_json("face.mp4")
    assert [f["index"] for f in item["frames"]] == list(range(len(video_frames(src))))
    assert all(f["pts"] is not None for f in item["frames"])
    ids = {t for f in item["frames"] for t in f["face_tracks"]}
    assert len(ids) >= 1 and -1 not in ids


# ----------------------------------------------------------------------------- memory
_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.video import Pipeline

def stub(image, kinds):  # a face in every frame: exercises tracking, redaction and the report
    h, w = image.shape[:2]
    return Detections.of_kind([[w * 0.3, h * 0.3, w * 0.5, h * 0.6]], [0.9], FACE)

Pipeline(Path(sys.argv[1]), ModelConfig(), None, detect=stub).run(Path(sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kb(src: Path, dst: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(src), str(dst)], capture_output=True, text=True, timeout=300, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_memory_stays_flat_on_a_long_clip(tmp_path):
    """A 10-minute clip must not need more memory than a 1-minute one (bounded queues, pruned tracks).

    Kept cheap: 1 frame/s, PCM audio, a stub detector (a face in every frame); 320x180 frames are
    large enough (86 kB each) that keeping the long clip's 540 extra frames would show as > 40 MB.
    """
    clips = {}
    for name, minutes in (("short", 1), ("long", 10)):
        clips[name] = make_clip(
            tmp_path / f"{name}.mkv", frames=60 * minutes, size=(320, 180), rate=1, audio=True, audio_codec="pcm_s16le"
        )
    rss_short = _peak_rss_kb(clips["short"], tmp_path / "o1.mkv")
    rss_long = _peak_rss_kb(clips["long"], tmp_path / "o2.mkv")
    assert len(video_frames(tmp_path / "o2.mkv")) == 600
    assert audio_packets(tmp_path / "o2.mkv") == audio_packets(clips["long"])
    assert rss_long - rss_short < 15_000, (rss_short, rss_long)


# ----------------------------------------------------------------------------- redaction in YUV
def test_redact_yuv_changes_only_the_mask():
    from veil.engine.redact import redaction_mask
    from veil.engine.video_redact import redact_yuv

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (240, 322, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    frame.pts = 7
    dets = Detections.of_kind([[41.3, 33.7, 101.9, 111.2], [290, 200, 322, 240]], [0.9, 0.8], FACE)
    config = ModelConfig()
    before = frame.to_ndarray()[:240]  # the Y plane
    out = redact_yuv(frame, dets, config)
    assert out.pts == 7
    after = out.to_ndarray()[:240]
    mask = redaction_mask((240, 322), dets, config)
    assert np.array_equal(before[~mask], after[~mask])  # bit-exact outside the mask
    inside = np.abs(before[mask].astype(int) - after[mask].astype(int)).mean()
    assert inside > 20  # random texture blurred to its mean


def test_injected_detections_are_blurred_in_the_output(tmp_path):
    """Odd picture size (4:4:4 path) and a detector stub: the region is blurred, the rest kept."""
    src = make_clip(tmp_path / "odd.mkv", frames=12, size=(161, 121), pix_fmt="yuv444p")
    box = [40, 30, 100, 100]

    def stub(image, kinds):
        return Detections.of_kind([[v * image.shape[1] / 161 for v in box]], [0.9], FACE)

    report = Pipeline(src, ModelConfig(enable_lp=False), None, detect=stub).run(tmp_path / "out.mkv")
    assert all(len(f.detections) == 1 for f in report.frames)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        fa = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        fb = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    assert fb.shape == fa.shape == (121, 161, 3)
    inside = np.abs(fa[45:85, 50:90] - fb[45:85, 50:90]).mean()
    outside = np.abs(fa[:, 130:] - fb[:, 130:]).mean()  # only coding noise there
    assert inside > 5 * outside, (inside, outside)


def test_detector_input_grows_with_the_resolution(tmp_path):
    """1440p: faces searched at a third of the frame's side, plates at 2/3 (not a fixed 640 / 960
    px, which would miss faces twice as large in 4K as in 1080p); small videos are upscaled."""
    sides: dict[str, set[tuple[int, int]]] = {}

    def recorder(image, kinds):
        if clip not in sides or len(sides[clip]) < 2:  # frame 0's whole-frame scans (then gated regions)
            sides.setdefault(clip, set()).add((max(image.shape[:2]), *sorted(kinds)))
        return Detections()

    config = ModelConfig(enable_lp=True)
    for clip, size in (("qhd", (2560, 1440)), ("small", (320, 180))):
        src = make_clip(tmp_path / f"{clip}.mp4", frames=2, size=size)
        Pipeline(src, config, None, detect=recorder).run(None)
    assert sides["qhd"] == {(854, FACE), (1708, PLATE)}  # 2560 / 3 and 2560 * 2 / 3, even (4:2:0)
    assert sides["small"] == {(640, FACE), (960, PLATE)}


def test_the_documented_x264_preset_setting_takes_effect(tmp_path):
    """VEIL_X264_PRESET (the README's name; the code once read VEIL_X264X264_PRESET) reaches the encoder: x264
    writes its options into the stream, and ultrafast turns CABAC off where the default veryfast has it on."""
    src = make_clip(tmp_path / "in.mp4", frames=10)
    script = (
        "import sys; from pathlib import Path; from veil.engine.config import ModelConfig; "
        "from veil.engine.video import anonymize_video; "
        "anonymize_video(Path(sys.argv[1]), Path(sys.argv[2]), ModelConfig(blur_face=False, enable_lp=False))"
    )
    for preset, cabac in ((None, b"cabac=1"), ("ultrafast", b"cabac=0")):
        env = {k: v for k, v in os.environ.items() if k != "VEIL_X264_PRESET"}
        if preset:
            env["VEIL_X264_PRESET"] = preset
        dst = tmp_path / f"out-{preset}.mp4"
        subprocess.run([sys.executable, "-c", script, str(src), str(dst)], check=True, env=env, timeout=120)
        assert cabac in dst.read_bytes(), preset
