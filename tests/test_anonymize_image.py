"""End to end on real photos: a face / plate found before anonymization is no longer found after."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from veil.engine.anonymize import anonymize, detect_file, media_kind
from veil.engine.config import ModelConfig
from veil.engine.detections import FACE, PLATE
from veil.engine.errors import MediaError

FACES = "dlib_faces/images/dlib_2008_001322.jpg"  # three frontal faces, 63-90 px
FACES_LABELLED = [[104, 162, 180, 238], [232, 218, 295, 281], [344, 155, 434, 245]]  # its labels.json boxes
CROWD = "facemask_faces/images/test_pb-140116-chinasmog-01_f0be38db4f1769172f4a0fa2e888d565.fit-2000w.jpg"
PLATE_PHOTO = "openalpr_plates/images/br_JOG9221.jpg"
PLATE_BOX = (522, 572, 779, 655)  # its labelled plate


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _boxes(report, kind: int) -> np.ndarray:
    return report.frames[0].detections.kind(kind).xyxy


def _assert_gone(before: np.ndarray, after: np.ndarray) -> None:
    for box in before:
        overlaps = [_iou(box, other) for other in after]
        assert max(overlaps, default=0.0) < 0.1, f"{box} still detected after anonymization"


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(mask_blur=False)], ids=["mask", "circle"])
def test_faces_are_not_detected_after_anonymization(detection_models, shared_data, tmp_path, config):
    src, dst = shared_data / FACES, tmp_path / "out.jpg"
    before = _boxes(detect_file(src, config), FACE)
    assert len(before) == 3
    report = anonymize(src, dst, config)
    assert np.allclose(_boxes(report, FACE), before)
    after = detect_file(dst, config)
    assert len(_boxes(after, FACE)) == 0
    # Not even at the lowest sensible threshold near the original faces.
    _assert_gone(before, _boxes(detect_file(dst, ModelConfig(blur_threshold=0.1)), FACE))
    with Image.open(dst) as im:
        assert im.format == "JPEG" and im.size == (report.width, report.height)


def _detail(rgb: np.ndarray, box) -> float:
    """High-frequency energy at the face's own scale, independent of any detector: the variance of the
    Laplacian of the box's central half, resized to 32x32 (so a 300 px face and a 75 px one compare)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    gray = cv2.cvtColor(rgb[y0 + h // 4 : y1 - h // 4, x0 + w // 4 : x1 - w // 4], cv2.COLOR_RGB2GRAY)
    return cv2.Laplacian(cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA), cv2.CV_64F).var()


def test_large_faces_are_as_unrecognisable_as_small_ones(detection_models, shared_data, tmp_path):
    """The group photo as it is (faces of 63-90 px) and upscaled 4x (250-360 px, which need a proportionally
    stronger blur): inside each labelled face at most 1 % of the original detail is left (Veil leaves about
    0.2 %), and CenterFace finds none of them any more. Control: a Gaussian blur of sigma 8 px on the large
    faces (a small face's blur, not scaled up) leaves 2-4 % and fails the bound."""
    rgb = cv2.cvtColor(cv2.imread(str(shared_data / FACES)), cv2.COLOR_BGR2RGB)
    for scale in (1, 4):
        image = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        src, dst = tmp_path / f"x{scale}.png", tmp_path / f"x{scale}-out.png"
        Image.fromarray(image).save(src)
        anonymize(src, dst, ModelConfig())
        out = np.asarray(Image.open(dst).convert("RGB"))
        for box in np.asarray(FACES_LABELLED) * scale:
            assert _detail(out, box) <= 0.01 * _detail(image, box), f"detail left in {box} at {scale}x"
            if scale == 4:
                x0, y0, x1, y1 = box
                weak = image.copy()
                weak[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), 8)
                assert _detail(weak, box) > 0.01 * _detail(image, box)  # the control fails the bound
    before = _boxes(detect_file(src, ModelConfig()), FACE)
    assert len(before) == 3 and (before[:, 2] - before[:, 0]).min() > 200
    _assert_gone(before, _boxes(detect_file(dst, ModelConfig(blur_threshold=0.1)), FACE))


def test_crowd_faces_are_not_detected_after_anonymization(detection_models, shared_data, tmp_path):
    src, dst = shared_data / CROWD, tmp_path / "crowd.jpg"
    before = _boxes(detect_file(src, ModelConfig()), FACE)
    assert len(before) >= 3
    anonymize(src, dst, ModelConfig())
    _assert_gone(before, _boxes(detect_file(dst, ModelConfig()), FACE))


@pytest.mark.parametrize("mask_blur", [True, False], ids=["mask", "circle"])
def test_plate_is_not_detected_after_anonymization(detection_models, shared_data, tmp_path, mask_blur):
    config = ModelConfig(enable_lp=True, mask_blur=mask_blur)
    src, dst = shared_data / PLATE_PHOTO, tmp_path / "car.jpg"
    before = _boxes(detect_file(src, config), PLATE)
    assert any(_iou(box, PLATE_BOX) > 0.5 for box in before)  # the labelled plate
    anonymize(src, dst, config)
    _assert_gone(before, _boxes(detect_file(dst, ModelConfig(enable_lp=True, lp_threshold=0.1)), PLATE))


def test_plates_are_blurred_by_default_and_left_alone_when_disabled(detection_models, shared_data, tmp_path):
    """enable_lp defaults to on (the privacy-safe reading of the vendor's pages): with the default config the
    labelled plate's pixels are changed; with enable_lp=false they come out unchanged (lossless PNG in and out)."""
    src = tmp_path / "car.png"
    Image.open(shared_data / PLATE_PHOTO).convert("RGB").save(src)
    assert len(_boxes(detect_file(src, ModelConfig(enable_lp=False)), PLATE)) == 0
    assert len(_boxes(detect_file(src, ModelConfig()), PLATE)) > 0
    x0, y0, x1, y1 = PLATE_BOX
    plate = np.asarray(Image.open(src))[y0:y1, x0:x1].astype(int)
    for config, name in ((ModelConfig(enable_lp=False), "off.png"), (ModelConfig(), "on.png")):
        anonymize(src, tmp_path / name, config)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "off.png"))[y0:y1, x0:x1], plate)
    assert np.abs(np.asarray(Image.open(tmp_path / "on.png"))[y0:y1, x0:x1] - plate).mean() > 10


def test_nothing_enabled_copies_pixels_and_strips_metadata(tmp_path):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src)
    progress: list[float] = []
    report = anonymize(src, dst, ModelConfig(blur_face=False), progress=progress.append)
    assert report.media == "image" and (report.width, report.height) == (60, 40) and report.detection_count == 0
    assert np.array_equal(np.asarray(Image.open(dst)), pixels)
    assert progress[-1] == 1.0 and progress == sorted(progress)


# ----------------------------------------------------------------------------- sniffing and failures
def test_media_kind_sniffs_content_not_extension(shared_data, tmp_path):
    disguised = tmp_path / "photo.mp4"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(disguised, "PNG")
    assert media_kind(disguised) == "image"
    video = next((shared_data / "videos").glob("*.mp4"))
    renamed = tmp_path / "clip.jpg"
    renamed.symlink_to(video)
    assert media_kind(renamed) == "video"


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty file"),
        (b"just some text, neither image nor video\n" * 20, "not an image or a video"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, "corrupt or truncated"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_file(tmp_path, content, message):
    src, dst = tmp_path / "bad.jpg", tmp_path / "out" / "bad.jpg"
    dst.parent.mkdir()
    src.write_bytes(content)
    with pytest.raises(MediaError, match=message):
        anonymize(src, dst, ModelConfig(blur_face=False))
    with pytest.raises(MediaError, match=message):
        detect_file(src, ModelConfig(blur_face=False))
    assert list(dst.parent.iterdir()) == []


def test_failed_write_leaves_neither_output_nor_temp_file(tmp_path, monkeypatch):
    from veil.engine import image_io

    src, dst = tmp_path / "in.png", tmp_path / "out" / "in.png"
    dst.parent.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src)
    dst.write_bytes(b"previous result")

    def broken_write(path: Path, image, rgb) -> None:
        Path(path).write_bytes(b"half a file")
        raise MediaError("disk full")

    monkeypatch.setattr(image_io, "write_image", broken_write)
    with pytest.raises(MediaError, match="disk full"):
        anonymize(src, dst, ModelConfig(blur_face=False))
    assert [p.name for p in dst.parent.iterdir()] == ["in.png"]
    assert dst.read_bytes() == b"previous result"  # the old output was not clobbered
