"""Image input/output: formats, modes, EXIF orientation, metadata stripping, JPEG quality, bad input."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, JpegImagePlugin

from veil.engine.errors import MediaError
from veil.engine.image_io import estimate_jpeg_quality, read_image, write_image

SERIAL = b"SN-4711-VEIL-SECRET"
MAKER_NOTE = b"MAKERNOTE-VEIL-SECRET"
COMMENT = b"COMMENT-VEIL-SECRET"
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b"<rdf:Description>XMP-VEIL-SECRET</rdf:Description></rdf:RDF></x:xmpmeta>"
)
# Make, Model, EXIF IFD, GPS IFD, XMP, IPTC, DateTime, Artist, Copyright
IDENTIFYING_TAGS = {0x010F, 0x0110, 0x8769, 0x8825, 0x02BC, 0x83BB, 0x0132, 0x013B, 0x8298}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth photo-like RGB image (gradients + a few shapes), friendly to lossy codecs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.dstack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255])
    rng = np.random.default_rng(seed)
    for _ in range(6):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 20)
        image[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


# ----------------------------------------------------------------------------- EXIF with a thumbnail
def _ifd(entries: list[tuple[int, int, int, bytes]], start: int, next_ifd: int = 0) -> bytes:
    """One little-endian TIFF IFD placed at offset `start`, its out-of-line values right after it."""
    data_start = start + 2 + 12 * len(entries) + 4
    table, data = struct.pack("<H", len(entries)), b""
    for tag, typ, count, payload in sorted(entries):
        if len(payload) <= 4:
            table += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, typ, count, data_start + len(data))
            data += payload + b"\0" * (len(payload) % 2)
    return table + struct.pack("<I", next_ifd) + data


def _ascii(tag: int, text: bytes) -> tuple[int, int, int, bytes]:
    return tag, 2, len(text) + 1, text + b"\0"


def _exif_with_thumbnail(orientation: int = 1) -> tuple[bytes, bytes]:
    """EXIF (APP1 payload) with camera make/model/serial, a maker note, GPS and an IFD1 JPEG thumbnail."""
    thumb = io.BytesIO()
    Image.fromarray(_photo(30, 40, seed=9)).save(thumb, "JPEG", quality=90)
    thumb = thumb.getvalue()

    def ifd0(exif_at: int, gps_at: int, next_ifd: int) -> bytes:
        return _ifd(
            [
                _ascii(0x010F, b"VeilCam"),
                _ascii(0x0110, b"Model X"),
                (0x0112, 3, 1, struct.pack("<H", orientation)),
                (0x8769, 4, 1, struct.pack("<I", exif_at)),
                (0x8825, 4, 1, struct.pack("<I", gps_at)),
            ],
            8,
            next_ifd,
        )

    def exif_ifd(at: int) -> bytes:
        return _ifd([_ascii(0xA431, SERIAL), (0x927C, 7, len(MAKER_NOTE), MAKER_NOTE)], at)

    def gps_ifd(at: int) -> bytes:
        lat = struct.pack("<6I", 52, 1, 31, 1, 1234, 100)
        return _ifd([_ascii(1, b"N"), (2, 5, 3, lat), _ascii(3, b"E"), (4, 5, 3, lat)], at)

    def ifd1(at: int, thumb_at: int) -> bytes:
        return _ifd([(0x0201, 4, 1, struct.pack("<I", thumb_at)), (0x0202, 4, 1, struct.pack("<I", len(thumb)))], at)

    exif_at = 8 + len(ifd0(0, 0, 0))
    gps_at = exif_at + len(exif_ifd(exif_at))
    ifd1_at = gps_at + len(gps_ifd(gps_at))
    thumb_at = ifd1_at + len(ifd1(ifd1_at, 0))
    tiff = (
        b"II*\0"
        + struct.pack("<I", 8)
        + ifd0(exif_at, gps_at, ifd1_at)
        + exif_ifd(exif_at)
        + gps_ifd(gps_at)
        + ifd1(ifd1_at, thumb_at)
        + thumb
    )
    return b"Exif\0\0" + tiff, thumb


def test_exif_builder_really_carries_gps_serial_and_thumbnail(tmp_path):
    exif, thumb = _exif_with_thumbnail()
    path = tmp_path / "camera.jpg"
    Image.fromarray(_photo()).save(path, "JPEG", exif=exif)
    with Image.open(path) as im:
        tags = im.getexif()
        assert tags.get_ifd(ExifTags.IFD.GPSInfo)[2]
        assert tags.get_ifd(ExifTags.IFD.Exif)[0xA431] == SERIAL.decode()
        assert tags.get_ifd(ExifTags.IFD.IFD1)[0x0202] == len(thumb)
    assert thumb in path.read_bytes()


def test_metadata_is_stripped_but_icc_profile_kept(tmp_path):
    exif, thumb = _exif_with_thumbnail()
    src, dst = tmp_path / "camera.jpg", tmp_path / "out.jpg"
    Image.fromarray(_photo()).save(src, "JPEG", quality=88, exif=exif, icc_profile=SRGB, comment=COMMENT, xmp=XMP)
    raw = src.read_bytes()
    assert all(secret in raw for secret in (SERIAL, MAKER_NOTE, COMMENT, b"XMP-VEIL-SECRET", thumb))

    image = read_image(src)
    write_image(dst, image, image.rgb)

    out = dst.read_bytes()
    for secret in (SERIAL, MAKER_NOTE, COMMENT, b"XMP-VEIL-SECRET", b"VeilCam", b"Exif\0\0"):
        assert secret not in out
    assert out.count(b"\xff\xd8") == 1, "a second JPEG (the EXIF thumbnail) is still embedded"
    with Image.open(dst) as im:
        assert len(im.getexif()) == 0
        assert not im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert "exif" not in im.info and "xmp" not in im.info and "comment" not in im.info
        assert im.info["icc_profile"] == SRGB


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape 160x120 with orientation 6 ("rotate 90 degrees clockwise to display").
    stored = _photo(120, 160)
    stored[:20, :20] = (255, 0, 0)  # marker at the stored top-left
    exif, _ = _exif_with_thumbnail(orientation=6)
    src = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(src, "JPEG", quality=95, exif=exif)

    image = read_image(src)
    assert (image.width, image.height) == (120, 160)
    assert np.abs(image.rgb[5, -5].astype(int) - (255, 0, 0)).max() < 40  # now at the top-right
    # The output is written upright, without an orientation tag to apply twice.
    dst = tmp_path / "out.jpg"
    write_image(dst, image, image.rgb)
    with Image.open(dst) as im:
        assert im.size == (120, 160)
        assert ExifTags.Base.Orientation not in im.getexif()


# ----------------------------------------------------------------------------- every format
FORMATS = [
    ("jpg", "JPEG", "JPEG"),
    ("png", "PNG", "PNG"),
    ("webp", "WEBP", "WEBP"),
    ("bmp", "BMP", "BMP"),
    ("tif", "TIFF", "TIFF"),
    ("heic", "HEIF", "HEIF"),
]


@pytest.mark.parametrize("ext,save_as,opened_as", FORMATS)
def test_every_format_round_trips_in_the_same_format(tmp_path, ext, save_as, opened_as):
    pixels = _photo()
    src, dst = tmp_path / f"in.{ext}", tmp_path / f"out.{ext}"
    options = {} if save_as == "BMP" else {"icc_profile": SRGB}
    if save_as in ("JPEG", "PNG", "WEBP", "HEIF", "TIFF"):
        options["exif"] = _exif_with_thumbnail()[0]
    Image.fromarray(pixels).save(src, save_as, **options)
    assert (SERIAL in src.read_bytes()) == ("exif" in options)

    image = read_image(src)
    assert image.rgb.shape == pixels.shape and image.rgb.dtype == np.uint8
    redacted = image.rgb.copy()
    redacted[40:80, 60:100] = 0
    write_image(dst, image, redacted)

    with Image.open(dst) as im:
        assert im.format == opened_as and im.size == (160, 120) and im.mode == "RGB"
        assert not IDENTIFYING_TAGS & set(im.getexif())  # a TIFF keeps only its structural tags
        if save_as != "BMP":
            assert im.info.get("icc_profile") == SRGB
        out = np.asarray(im.convert("RGB")).astype(int)
    assert SERIAL not in dst.read_bytes()
    lossless = save_as in ("PNG", "BMP", "TIFF")
    error = np.abs(out - redacted.astype(int)).mean()
    assert error == 0 if lossless else error < 4
    assert out[45:75, 65:95].max() < 40  # the redaction made it to the file


def test_lossless_webp_stays_lossless(tmp_path):
    src, dst = tmp_path / "in.webp", tmp_path / "out.webp"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src, "WEBP", lossless=True)
    image = read_image(src)
    write_image(dst, image, image.rgb)
    assert b"VP8L" in dst.read_bytes()[:64]
    assert np.array_equal(np.asarray(Image.open(dst).convert("RGB")), pixels)


def test_alpha_channel_is_kept(tmp_path):
    rgba = np.dstack([_photo(), np.tile(np.arange(160, dtype=np.uint8), (120, 1))])
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(rgba).save(src)
    image = read_image(src)
    assert image.rgb.shape == (120, 160, 3)
    redacted = image.rgb.copy()
    redacted[10:20, 10:20] = 0
    write_image(dst, image, redacted)
    out = np.asarray(Image.open(dst))
    assert out.shape == (120, 160, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert np.array_equal(out[..., :3], redacted)


def test_palette_image_with_transparency_becomes_rgba(tmp_path):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(_photo()).convert("P", palette=Image.Palette.ADAPTIVE).save(src, transparency=0)
    image = read_image(src)
    write_image(dst, image, image.rgb)
    with Image.open(dst) as im:
        assert im.mode == "RGBA"


def test_grayscale_and_16_bit_keep_their_mode_and_untouched_pixels(tmp_path):
    gray16 = (np.tile(np.arange(160, dtype=np.uint16) * 400, (120, 1)) + 7).astype(np.uint16)
    for name, img in (
        ("gray.png", Image.fromarray(_photo()[..., 0])),
        ("deep.png", Image.fromarray(gray16)),
        ("deep.tif", Image.fromarray(gray16)),
    ):
        src, dst = tmp_path / name, tmp_path / f"out-{name}"
        img.save(src)
        image = read_image(src)
        redacted = image.rgb.copy()
        redacted[50:60, 50:60] = 0
        write_image(dst, image, redacted)
        with Image.open(dst) as out_im:
            assert out_im.mode == img.mode
            out, before = np.asarray(out_im), np.asarray(img)
        untouched = np.ones(out.shape, bool)
        untouched[50:60, 50:60] = False
        assert np.array_equal(out[untouched], before[untouched])  # exact, 16 bits included
        assert (out[50:60, 50:60] == 0).all()


def test_mpo_second_picture_is_dropped(tmp_path):
    src, dst = tmp_path / "stereo.jpg", tmp_path / "out.jpg"
    first, second = Image.fromarray(_photo(seed=1)), Image.fromarray(_photo(seed=2))
    first.save(src, "MPO", save_all=True, append_images=[second])
    assert Image.open(src).format == "MPO"
    image = read_image(src)
    write_image(dst, image, image.rgb)
    with Image.open(dst) as im:
        assert im.format == "JPEG" and getattr(im, "n_frames", 1) == 1
    assert dst.read_bytes().count(b"\xff\xd8") == 1


# ----------------------------------------------------------------------------- JPEG quality
@pytest.mark.parametrize("quality", [40, 75, 92])
def test_jpeg_quality_is_estimated_and_kept(tmp_path, quality):
    src, dst = tmp_path / "in.jpg", tmp_path / "out.jpg"
    Image.fromarray(_photo()).save(src, "JPEG", quality=quality, subsampling=0)
    image = read_image(src)
    assert abs(image.jpeg_quality - quality) <= 1
    write_image(dst, image, image.rgb)
    with Image.open(src) as a, Image.open(dst) as b:
        assert abs(estimate_jpeg_quality(b.quantization) - quality) <= 1
        assert JpegImagePlugin.get_sampling(b) == JpegImagePlugin.get_sampling(a) == 0


def test_quality_estimate_matches_standard_tables():
    for quality in (10, 50, 85, 100):
        buf = io.BytesIO()
        Image.fromarray(_photo()).save(buf, "JPEG", quality=quality)
        assert estimate_jpeg_quality(Image.open(buf).quantization) == quality


# ----------------------------------------------------------------------------- bad input
def test_truncated_jpeg_is_a_clear_error(tmp_path):
    good = io.BytesIO()
    Image.fromarray(_photo(600, 800)).save(good, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(MediaError, match="corrupt or truncated"):
        read_image(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty file"),
        (b"hello, this is not a picture\n" * 10, "not a supported image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 20, "corrupt or truncated|not a supported image"),
    ],
)
def test_non_images_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(MediaError, match=message):
        read_image(path)


def test_unsupported_and_animated_images_are_rejected(tmp_path):
    gif = tmp_path / "a.gif"
    Image.fromarray(_photo()).save(gif)
    with pytest.raises(MediaError, match="unsupported image format GIF"):
        read_image(gif)
    animated = tmp_path / "a.webp"
    Image.fromarray(_photo()).save(animated, "WEBP", save_all=True, append_images=[Image.fromarray(_photo(seed=3))])
    with pytest.raises(MediaError, match="animated"):
        read_image(animated)


def test_write_rejects_a_wrong_shape(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_photo()).save(src)
    image = read_image(src)
    with pytest.raises(ValueError):
        write_image(tmp_path / "out.png", image, image.rgb[:10])


def test_cmyk_jpeg_stays_cmyk(tmp_path):
    src, dst = tmp_path / "print.jpg", tmp_path / "out.jpg"
    Image.fromarray(_photo()).convert("CMYK").save(src, "JPEG", quality=90)
    image = read_image(src)
    redacted = image.rgb.copy()
    redacted[40:80, 60:100] = 0
    write_image(dst, image, redacted)
    with Image.open(dst) as im:
        assert im.mode == "CMYK"
        assert np.asarray(im.convert("RGB"))[45:75, 65:95].max() < 40


def test_oversized_image_is_a_clear_error(tmp_path):
    src = tmp_path / "huge.png"
    Image.fromarray(_photo()).save(src)
    with pytest.raises(MediaError, match="image too large: 160 x 120 pixels"):
        read_image(src, max_pixels=160 * 120 - 1)
    assert read_image(src, max_pixels=160 * 120).width == 160


def test_detections_are_in_exif_oriented_pixels(detection_models, shared_data, tmp_path):
    from veil.engine.anonymize import detect_file
    from veil.engine.config import ModelConfig

    upright = np.asarray(Image.open(shared_data / "dlib_faces/images/dlib_2008_001322.jpg").convert("RGB"))
    reference, rotated = tmp_path / "upright.jpg", tmp_path / "rotated.jpg"
    Image.fromarray(upright).save(reference, "JPEG", quality=95)
    # Stored turned 90 degrees counter-clockwise; orientation 6 tells viewers to turn it back.
    Image.fromarray(np.rot90(upright)).save(rotated, "JPEG", quality=95, exif=_exif_with_thumbnail(orientation=6)[0])

    expected, report = detect_file(reference, ModelConfig()), detect_file(rotated, ModelConfig())
    assert (report.width, report.height) == (500, 375)
    want = expected.frames[0].detections.xyxy
    got = report.frames[0].detections.xyxy
    assert len(want) == len(got) == 3
    order = lambda boxes: boxes[np.argsort(boxes[:, 0])]  # noqa: E731
    assert np.abs(order(want) - order(got)).max() < 4
