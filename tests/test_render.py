"""Detect once, render many (issue 20): a detections document and renders from it, on real footage.

`veil anonymize` and `detect --candidates` + `render` give the same output; a render runs with no model;
thresholds, removed and kept candidates, added boxes and spans and removed tracks do what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from test_video import cut_clip
from veil.engine.anonymize import anonymize
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE, Detections
from veil.engine.document import EDITS, append_edits, iter_frames, read_edits
from veil.engine.redact import redaction_mask
from veil.engine.render import detect_document, render

pytestmark = pytest.mark.slow

CROWD = "facemask_faces/images/test_shutterstock_289132226.jpg"
CAR_CLIP = "videos/intel_car-detection.mp4"
VAN = "openalpr_plates/images/eu_test_084.jpg"  # a plate, and a driver's face behind the windscreen


@pytest.fixture(scope="module")
def crowd(shared_data, detection_models, tmp_path_factory) -> tuple[Path, Path]:
    """A crowd photo as lossless PNG (pixels compare exactly) and its document."""
    d = tmp_path_factory.mktemp("crowd")
    src = d / "crowd.png"
    Image.open(shared_data / CROWD).convert("RGB").save(src)
    detect_document(src, d / "crowd.doc", ModelConfig(enable_lp=False))
    return src, d / "crowd.doc"


@pytest.fixture(scope="module")
def clip(shared_data, detection_models, tmp_path_factory) -> tuple[Path, Path]:
    """6 s of the dev car clip (a car drives in, its plate found) and its document."""
    d = tmp_path_factory.mktemp("clip")
    src = cut_clip(shared_data / CAR_CLIP, d / "cars.mp4", 6.0, start=5.0)
    detect_document(src, d / "cars.doc", ModelConfig())
    return src, d / "cars.doc"


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]


def _edit(**values):
    return EDITS.validate_python([values])


def test_anonymize_and_detect_then_render_give_the_same_photo(crowd, shared_data, tmp_path):
    src, _ = crowd
    jpeg = shared_data / CROWD
    for path in (src, jpeg):
        anonymize(path, tmp_path / f"one{path.suffix}", ModelConfig(), document=tmp_path / "one.doc")
        detect_document(path, tmp_path / "two.doc", ModelConfig())
        render(path, tmp_path / "two.doc", tmp_path / f"two{path.suffix}")
        assert (tmp_path / f"one{path.suffix}").read_bytes() == (tmp_path / f"two{path.suffix}").read_bytes()


def test_anonymize_and_detect_then_render_give_the_same_video(clip, tmp_path):
    src, doc = clip
    report = anonymize(src, tmp_path / "one.mp4", ModelConfig())
    render(src, doc, tmp_path / "two.mp4")
    one, two = _frames(tmp_path / "one.mp4"), _frames(tmp_path / "two.mp4")
    assert len(one) == len(two) == len(report.frames)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert any(len(f.detections.kind(PLATE)) for f in report.frames)  # the clip has something to blur


def _veil(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real `veil` command of this environment, with `env` on top of ours."""
    veil = Path(sys.executable).with_name("veil")
    return subprocess.run([str(veil), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def _detect_render_anonymize(src: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """`veil detect SRC --candidates --json DOC` then `veil render SRC DOC -o rendered/`, and `veil anonymize
    SRC -o anonymized/ --report`: the two outputs and the per-file report."""
    doc = tmp_path / "src.doc"
    for args in (
        ("detect", str(src), "--candidates", "--json", str(doc)),
        ("render", str(src), str(doc), "-o", str(tmp_path / "rendered")),
        ("anonymize", str(src), "-o", str(tmp_path / "anonymized"), "--report", str(tmp_path / "report.json")),
    ):
        out = _veil(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert "Traceback" not in out.stderr
    [summary] = json.loads((tmp_path / "report.json").read_text())["files"]
    return tmp_path / "rendered" / src.name, tmp_path / "anonymized" / src.name, summary


def test_the_cli_detect_then_render_gives_anonymize_s_photo_byte_for_byte(shared_data, detection_models, tmp_path):
    """A real photo with a face (the van's driver, behind the windscreen) and a plate, through the real
    command: `detect --candidates` + `render` writes the same bytes as `anonymize`, which drew both kinds."""
    src = tmp_path / "van.jpg"
    src.write_bytes((shared_data / VAN).read_bytes())
    rendered, anonymized, summary = _detect_render_anonymize(src, tmp_path)
    assert summary["faces"]["regions"] >= 1 and summary["plates"]["regions"] >= 1, summary
    assert rendered.read_bytes() == anonymized.read_bytes()
    assert not np.array_equal(_pixels(anonymized), _pixels(src))


def test_the_cli_detect_then_render_gives_anonymize_s_video_frame_for_frame(shared_data, detection_models, tmp_path):
    """2 s of the dev car clip (parked cars with readable plates) through the real command: `detect
    --candidates` + `render` decodes to the same frames as `anonymize`, which blurred plates; and the same
    render with VEIL_MODEL_DIR an empty folder gives the same frames again."""
    src = cut_clip(shared_data / CAR_CLIP, tmp_path / "cars.mp4", 2.0, start=15.5)
    rendered, anonymized, summary = _detect_render_anonymize(src, tmp_path)
    one, two, source = _frames(anonymized), _frames(rendered), _frames(src)
    assert len(one) == len(two) == len(source) == summary["frames"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert summary["plates"]["regions"] >= len(source), summary  # plates were drawn ...
    assert sum(np.abs(a - s).max() > 64 for a, s in zip(one, source)) >= len(source) // 2  # ... on the pixels
    empty = tmp_path / "no-models"
    empty.mkdir()
    out = _veil("render", str(src), str(tmp_path / "src.doc"), "-o", str(tmp_path / "bare"), VEIL_MODEL_DIR=str(empty))
    assert out.returncode == 0, out.stderr
    assert all(np.array_equal(a, b) for a, b in zip(_frames(tmp_path / "bare" / src.name), one))
    assert len(_frames(tmp_path / "bare" / src.name)) == len(one)
    refused = _veil("detect", str(src), "--json", str(tmp_path / "x.json"), VEIL_MODEL_DIR=str(empty))
    assert refused.returncode != 0  # the folder really holds no model


def test_render_runs_with_the_model_directory_empty(crowd, tmp_path):
    src, doc = crowd
    render(src, doc, tmp_path / "here.png")
    empty = tmp_path / "no-models"
    empty.mkdir()
    veil = Path(sys.executable).with_name("veil")
    out = subprocess.run(
        [str(veil), "render", str(src), str(doc), "-o", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VEIL_MODEL_DIR": str(empty)},
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cli" / "crowd.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    control = subprocess.run(
        [str(veil), "anonymize", str(src), "-o", str(tmp_path / "anon")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VEIL_MODEL_DIR": str(empty)},
    )
    assert control.returncode != 0  # the same directory really holds no model


def test_thresholds_pick_exactly_the_candidates_above_them(crowd, tmp_path):
    src, doc = crowd
    candidates = next(iter_frames(doc)).candidates.kind(FACE)
    assert len(candidates) > len(candidates[candidates.scores >= 0.5])  # there are candidates below the default
    for threshold in (0.15, 0.3, 0.5, 0.8):
        report = render(src, doc, tmp_path / f"t{threshold}.png", {"blur_threshold": threshold})
        drawn = report.frames[0].detections
        expected = candidates[candidates.scores >= threshold]
        assert np.array_equal(np.sort(drawn.scores), np.sort(expected.scores))
        assert np.allclose(drawn.xyxy[np.argsort(drawn.scores)], expected.xyxy[np.argsort(expected.scores)])
    with pytest.raises(ValueError, match="blur_threshold"):  # below the floor the document kept
        render(src, doc, tmp_path / "low.png", {"blur_threshold": 0.05})


def test_an_added_box_is_blurred_and_a_removed_candidate_is_left_as_it_was(crowd, tmp_path):
    src, doc = crowd
    plain = tmp_path / "plain.png"
    plain_report = render(src, doc, plain)
    frame = next(iter_frames(doc))
    faces = frame.candidates
    first = int(np.argmax(faces.scores))  # the surest face
    x1, y1, x2, y2 = (int(v) for v in faces.xyxy[first])
    source, before = _pixels(src), _pixels(plain)
    assert np.abs(before[y1:y2, x1:x2] - source[y1:y2, x1:x2]).mean() > 5  # blurred in the plain render
    box = (10.0, 10.0, 90.0, 70.0)  # a corner of the photo with texture and no face
    assert not (before[10:70, 10:90] != source[10:70, 10:90]).any()
    edits = _edit(op="add", kind="face", frames={0: box}, by="reviewer") + _edit(
        op="remove", ids=[f"0.{first}"], by="reviewer"
    )
    render(src, doc, tmp_path / "edited.png", edits=edits)
    after = _pixels(tmp_path / "edited.png")
    assert np.abs(after[12:68, 12:88] - source[12:68, 12:88]).mean() > 3  # the added box is blurred
    assert np.array_equal(after[y1:y2, x1:x2], source[y1:y2, x1:x2])  # the removed face: the source's pixels
    # Nothing changed away from the redacted regions (overlapping regions are blurred together, so a
    # neighbour of the removed face may change where their regions meet).
    drawn = Detections.concat([plain_report.frames[0].detections, Detections.of_kind([box], [1.0], FACE)])
    near = cv2.dilate(redaction_mask(source.shape[:2], drawn, ModelConfig()).astype(np.uint8), np.ones((5, 5)))
    changed = (after != before).any(axis=2)
    assert changed.any() and not changed[near == 0].any()


def test_edits_recorded_in_the_document_are_applied_and_kept_apart(crowd, tmp_path):
    src, doc = crowd
    copy = tmp_path / "copy.doc"
    copy.write_bytes(doc.read_bytes())
    candidates_before = next(iter_frames(copy)).candidates
    weakest = int(np.argmin(candidates_before.scores))
    append_edits(copy, _edit(op="keep", ids=[f"0.{weakest}"], by="ana@example.com"))
    [edit] = read_edits(copy)
    assert edit.by == "ana@example.com" and edit.at
    assert np.array_equal(next(iter_frames(copy)).candidates.scores, candidates_before.scores)  # not rewritten
    report = render(src, copy, tmp_path / "kept.png")
    assert len(report.frames[0].detections) == len(render(src, doc, tmp_path / "plain.png").frames[0].detections) + 1


def test_a_span_added_on_frames_10_and_40_covers_every_frame_between(clip, tmp_path):
    """Drawn solid (black) to see it: the span's box is on every frame from 10 to 40, interpolated."""
    src, doc = clip
    solid = {"style": "solid"}
    plain = render(src, doc, tmp_path / "plain.mp4", solid)
    edits = _edit(op="add", kind="face", frames={10: (20.0, 300.0, 80.0, 360.0), 40: (80.0, 300.0, 140.0, 360.0)})
    report = render(src, doc, tmp_path / "span.mp4", solid, edits=edits)
    for frame, before in zip(report.frames, plain.frames):
        extra = len(frame.detections) - len(before.detections)
        assert extra == (1 if 10 <= frame.index <= 40 else 0), frame.index
    f25 = report.frames[25].detections
    assert np.allclose(f25.xyxy[f25.track_ids == -1][0], (50.0, 300.0, 110.0, 360.0))  # interpolated
    edited = _frames(tmp_path / "span.mp4")
    for index in range(9, 42):
        x1 = 20 + 2 * (index - 10)  # the interpolated box's left edge
        core = edited[index][315:345, x1 + 15 : x1 + 45]
        assert (core.mean() < 25) == (10 <= index <= 40), index


def test_a_removed_track_is_unblurred_on_all_its_frames(clip, tmp_path):
    """On every frame of the removed track, the pixels it was blurred on (but those another box still blurs)
    differ from the source only by codec noise: about as much as the noisiest untouched region of the same
    size in the same frame (a moving car costs more bits than the tarmac), and as the same pixels of a
    render with nothing drawn; the blurred render differs from the source there many times more."""
    src, doc = clip
    plain = render(src, doc, tmp_path / "plain.mp4")
    tracks = [int(t) for f in plain.frames for t in f.detections.track_ids if t > 0]
    assert tracks, "the clip's plate must be tracked"
    track = max(set(tracks), key=tracks.count)
    report = render(src, doc, tmp_path / "removed.mp4", edits=_edit(op="remove_track", track=track))
    render(src, doc, tmp_path / "none.mp4", {"blur_face": False, "enable_lp": False})
    source, removed, blurred = _frames(src), _frames(tmp_path / "removed.mp4"), _frames(tmp_path / "plain.mp4")
    untouched_render = _frames(tmp_path / "none.mp4")
    config, near = ModelConfig(), np.ones((9, 9), np.uint8)  # the mask grown by a few pixels (codec bleed)
    region_diff, blurred_diff, same_pixels_noise, untouched_noise = [], [], [], []
    for drawn in plain.frames:
        if not (drawn.detections.track_ids == track).any():
            continue
        index, shape = drawn.index, source[drawn.index].shape[:2]
        assert not (report.frames[index].detections.track_ids == track).any()
        was = redaction_mask(shape, drawn.detections[drawn.detections.track_ids == track], config)
        still = cv2.dilate(redaction_mask(shape, report.frames[index].detections, config).astype(np.uint8), near)
        pixels = was & ~still.astype(bool)  # another plate may cross this one's box: it is still blurred
        assert pixels.sum() >= 0.5 * was.sum()
        untouched = ~cv2.dilate(redaction_mask(shape, drawn.detections, config).astype(np.uint8), near).astype(bool)
        off_removed, off_blurred, off_none = (
            np.abs(frames[index] - source[index]).mean(axis=2) for frames in (removed, blurred, untouched_render)
        )
        region_diff.append(off_removed[pixels].mean())
        blurred_diff.append(off_blurred[pixels].mean())
        same_pixels_noise.append(off_none[pixels].mean())
        ys, xs = np.nonzero(was)
        untouched_noise.append(_noisiest_tile(off_removed, untouched, int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1))
    assert len(region_diff) >= 10, "the track must span frames"
    region, noise, same, unblurred = (
        float(np.mean(v)) for v in (region_diff, untouched_noise, same_pixels_noise, blurred_diff)
    )
    assert region <= 1.5 * noise and region <= 1.25 * same + 0.25, (region, noise, same)
    assert unblurred >= 5 * noise and unblurred >= 5 * region, (unblurred, noise, region)
    for n, (diff, tile, pixels_noise) in enumerate(zip(region_diff, untouched_noise, same_pixels_noise)):
        assert diff <= 2 * max(tile, pixels_noise) + 0.5, (n, diff, tile, pixels_noise)  # unblurred on every frame


def _noisiest_tile(diff: np.ndarray, untouched: np.ndarray, height: int, width: int) -> float:
    """The largest mean of `diff` over a `height` x `width` tile wholly inside `untouched` (tiles at half
    steps): the codec noise of the busiest part of the frame that nothing was drawn on."""
    means = [
        diff[y : y + height, x : x + width].mean()
        for y in range(0, diff.shape[0] - height + 1, max(1, height // 2))
        for x in range(0, diff.shape[1] - width + 1, max(1, width // 2))
        if untouched[y : y + height, x : x + width].all()
    ]
    assert means, "no untouched region of the track's size"
    return float(max(means))


def test_the_per_file_report_says_where_to_look(crowd, clip, tmp_path):
    """`veil anonymize --report`: drawn regions, and the candidates just under the threshold counted from the
    document; a video's tracks and the longest span its tracker bridged."""
    from click.testing import CliRunner

    from veil.cli import main

    src, doc = crowd
    out = CliRunner().invoke(
        main,
        [
            "anonymize",
            str(src),
            str(clip[0]),
            "-o",
            str(tmp_path / "out"),
            "--report",
            str(tmp_path / "report.json"),
            "--no-enable-lp",
        ],
    )
    assert out.exit_code == 0, out.output
    photo, video = json.loads((tmp_path / "report.json").read_text())["files"]
    scores = next(iter_frames(doc)).candidates.kind(FACE).scores
    assert photo["faces"]["regions"] == int((scores >= 0.5).sum()) > 0
    assert photo["faces"]["below_threshold"] == {
        "candidates": int(((scores >= 0.3) & (scores < 0.5)).sum()),
        "frames": int(((scores >= 0.3) & (scores < 0.5)).any()),
        "from": 0.3,
    }
    assert video["media"] == "video" and video["frames"] == 75 and video["plates"]["regions"] == 0  # plates off
    from veil.engine.file_report import anonymize_with_summary

    report, summary = anonymize_with_summary(clip[0], tmp_path / "cars.mp4", ModelConfig())
    plates = summary["plates"]
    assert plates["regions"] == sum(len(f.detections.kind(PLATE)) for f in report.frames) > 0
    assert plates["tracks"] >= 1 and plates["frames"] <= 75
    assert 0 < plates["longest_bridge"] < plates["frames"]  # the car's plate is led in before it is found
