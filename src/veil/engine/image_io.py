"""Still images in and out: JPEG, PNG, WebP, BMP, TIFF and HEIC.

`read_image` decodes a file into an RGB uint8 array with its EXIF orientation applied, and keeps
what is needed to write it back in the same format: the pixels in their own mode (alpha,
grayscale, 16-bit, CMYK), the ICC profile, the resolution and the JPEG quantization tables and
chroma subsampling (so the output's quality matches the input's).

`write_image` writes the redacted RGB array in the input's format. The output is built from
pixels only, so identifying metadata never reaches it: no EXIF (GPS, camera serial, maker notes,
the EXIF thumbnail that would show the unblurred face), no XMP, no IPTC, no comments or text
chunks, no extra MPO/HEIF images. Only the ICC profile and the resolution are carried over. Pixels
that redaction did not change keep their exact source values in lossless formats, whatever the mode
(16-bit grayscale included; 16-bit colour is decoded by Pillow as 8-bit and written so).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from pillow_heif import register_heif_opener

from .config import MediaLimits
from .errors import MediaError

register_heif_opener()
# Veil checks its own limit (MediaLimits.max_image_pixels) from the header before decoding; Pillow's global
# guard would otherwise warn above 89 MP and refuse above 179 MP whatever that setting says.
Image.MAX_IMAGE_PIXELS = None

# Pillow format name of the input -> format written. MPO (camera JPEGs with a second picture) is
# written as a plain JPEG: the second picture would carry the unredacted scene.
FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "BMP": "BMP", "TIFF": "TIFF", "HEIF": "HEIF"}
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, TIFF, HEIC"
_WEBP_LOSSY_QUALITY = 90
_HEIF_QUALITY = 90
_TIFF_COMPRESSIONS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits", "jpeg"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Errors Pillow and its plugins raise for corrupt, truncated or hostile input.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    RuntimeError,
)


@dataclass
class ImageFile:
    """A decoded still image and what is needed to write it back in the same format."""

    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied: what detection and redaction work on
    format: str  # Pillow format to write: JPEG, PNG, WEBP, BMP, TIFF or HEIF
    # The oriented pixels in their own mode (alpha, L, I;16, CMYK, ...); None for plain RGB (it is `rgb`).
    native: Image.Image | None = field(default=None, repr=False)
    icc_profile: bytes | None = field(default=None, repr=False)
    save_options: dict[str, Any] = field(default_factory=dict)
    jpeg_quality: int | None = None  # estimated from the quantization tables (JPEG input only)

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def sniff_image_format(path: Path) -> str | None:
    """The Pillow format name if Pillow recognises the file's header (without decoding), else None."""
    try:
        with Image.open(path) as im:
            return im.format
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        return None


def read_image(path: Path, max_pixels: int = MediaLimits.max_image_pixels) -> ImageFile:
    """Decode `path` into an `ImageFile`; raise MediaError naming the problem for bad input (a picture over
    `max_pixels` is refused from its header, before it is decoded)."""
    with _opened(path, max_pixels) as im:
        source_format = im.format
        assert source_format is not None  # _opened refuses an image without a known format
        save_options, quality = _save_options(im, FORMATS[source_format], Path(path))
        icc = im.info.get("icc_profile") or None
        with _decoding():
            im.load()
            native = ImageOps.exif_transpose(im)
    native = _normalise_mode(native)
    rgb = _rgb_of(native)
    return ImageFile(rgb, FORMATS[source_format], None if native.mode == "RGB" else native, icc, save_options, quality)


def check_image(path: Path, max_pixels: int = MediaLimits.max_image_pixels) -> tuple[int, int]:
    """(width, height) of an image `read_image` will accept, found by decoding it (a JPEG at 1/8 scale,
    which still reads every byte, so truncation shows); MediaError naming the problem otherwise."""
    with _opened(path, max_pixels) as im:
        size = im.size
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        with _decoding():
            im.load()
    return size


@contextmanager
def _opened(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """The image opened (header only) once format, frame count and pixel count are known to be acceptable."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("no such file")
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    with _decoding():
        im = Image.open(path)
    with im:
        source_format = im.format or "unknown"
        if source_format not in FORMATS:
            raise MediaError(f"unsupported image format {source_format} (supported: {FORMAT_NAMES})")
        with _decoding():
            frames = getattr(im, "n_frames", 1)
        if frames > 1 and source_format != "MPO":
            raise MediaError(
                f"{source_format} with {frames} frames or pages: animated and multi-page images "
                "are not supported (convert an animation to MP4)"
            )
        if im.width * im.height > max_pixels:
            raise MediaError(
                f"image too large: {im.width} x {im.height} pixels "
                f"({im.width * im.height / 1e6:.3g} MP; at most {max_pixels / 1e6:.3g} MP)"
            )
        yield im


@contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's errors for corrupt, truncated or hostile input as MediaError."""
    try:
        yield
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:  # only if someone set Pillow's global guard again
        raise MediaError(f"image too large to process safely ({exc})") from None
    except UnidentifiedImageError:
        raise MediaError(f"not a supported image (unrecognised content; supported: {FORMAT_NAMES})") from None
    except _DECODE_ERRORS as exc:
        raise MediaError(f"cannot decode image, the file is corrupt or truncated ({exc})") from None


def write_image(dst: Path | IO[bytes], image: ImageFile, rgb: np.ndarray) -> None:
    """Write `rgb` (HxWx3 uint8, same size as `image.rgb`) in `image`'s format, mode and quality."""
    if rgb.shape != image.rgb.shape or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array of shape {image.rgb.shape}, got {rgb.dtype} {rgb.shape}")
    out = _native_of(image, rgb)
    out.info = {}  # nothing from the source (EXIF, XMP, comments) may ride along
    options = dict(image.save_options)
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    try:
        out.save(dst, format=image.format, **options)
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot write {image.format} image: {exc}") from None


# ----------------------------------------------------------------------------- JPEG quality
_IJG_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    np.float64,
)
_IJG_CHROMA = np.array(
    [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38,
    np.float64,
)


def _ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


def estimate_jpeg_quality(qtables: dict[int, Any] | list[Any]) -> int:
    """The IJG quality (1..100) whose standard tables are closest to `qtables`.

    Compares table sums, which does not depend on the tables' coefficient order and also gives a
    sensible equivalent for encoders with their own tables (cameras, Photoshop).
    """
    tables = list(qtables.values()) if isinstance(qtables, dict) else list(qtables)
    actual = [float(np.sum(tables[0]))] + ([float(np.sum(tables[1]))] if len(tables) > 1 else [])
    bases = [_IJG_LUMA, _IJG_CHROMA][: len(actual)]

    def error(q: int) -> float:
        return sum(abs(_ijg_table(b, q).sum() - a) for b, a in zip(bases, actual))

    return min(range(1, 101), key=error)


# ----------------------------------------------------------------------------- helpers
def _save_options(im: Image.Image, out_format: str, path: Path) -> tuple[dict[str, Any], int | None]:
    """Encoder options that reproduce the input's quality (read before the image is transposed)."""
    options: dict[str, Any] = {}
    dpi = im.info.get("dpi")
    if dpi and out_format in ("JPEG", "PNG", "TIFF"):
        options["dpi"] = tuple(float(v) for v in dpi)
    quality = None
    if out_format == "JPEG":
        qtables = getattr(im, "quantization", None)
        if qtables:
            options["qtables"] = {k: list(v) for k, v in qtables.items()}
            quality = estimate_jpeg_quality(qtables)  # informational: no `quality` option, it would rescale the tables
        sampling = JpegImagePlugin.get_sampling(im) if isinstance(im, JpegImagePlugin.JpegImageFile) else -1
        if sampling != -1:
            options["subsampling"] = sampling
        if im.info.get("progressive") or im.info.get("progression"):
            options["progressive"] = True
    elif out_format == "WEBP":
        if _webp_is_lossless(path):
            options["lossless"] = True
        else:
            options["quality"] = _WEBP_LOSSY_QUALITY
    elif out_format == "TIFF":
        compression = im.info.get("compression", "raw")
        options["compression"] = compression if compression in _TIFF_COMPRESSIONS else "tiff_adobe_deflate"
    elif out_format == "HEIF":
        options["quality"] = _HEIF_QUALITY
    return options, quality


def _webp_is_lossless(path: Path) -> bool:
    """True if the WebP bitstream is VP8L (lossless); walks the RIFF chunks."""
    with open(path, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WEBP":
            return False
        while chunk := f.read(8):
            if len(chunk) < 8:
                return False
            fourcc, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if fourcc in (b"VP8L", b"VP8 "):
                return fourcc == b"VP8L"
            f.seek(size + (size & 1), 1)
    return False


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Modes that cannot be written back pixel-exactly become RGB/RGBA/LA (palette, premultiplied)."""
    if im.mode in ("P", "PA"):
        has_alpha = im.mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if im.mode == "RGBa":
        return im.convert("RGBA")
    if im.mode == "La":
        return im.convert("LA")
    if im.mode in ("RGBX", "F"):
        return im.convert("RGB")
    return im


def _rgb_of(native: Image.Image) -> np.ndarray:
    mode = native.mode
    if mode == "RGB":
        return np.array(native, np.uint8)
    if mode == "RGBA":
        return np.ascontiguousarray(np.asarray(native, np.uint8)[..., :3])
    if mode in _SIXTEEN_BIT:
        gray = (np.clip(np.asarray(native).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(native.convert("RGB"), np.uint8)


def _native_of(image: ImageFile, rgb: np.ndarray) -> Image.Image:
    """`rgb` back in the source's mode; pixels redaction did not touch keep their source values."""
    native = image.native
    if native is None:
        return Image.fromarray(rgb)
    if native.mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, np.asarray(native)[..., 3]]))
    changed = np.any(rgb != image.rgb, axis=2)
    if not changed.any():
        return native.copy()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if native.mode in _SIXTEEN_BIT:
        values = np.array(native)
        values[changed] = gray[changed].astype(values.dtype) * 257
        return Image.fromarray(values)
    if native.mode == "LA":
        values = np.array(native)
        values[..., 0][changed] = gray[changed]
        return Image.fromarray(values)
    out = native.copy()
    out.paste(Image.fromarray(rgb).convert(native.mode), (0, 0), Image.fromarray(changed.astype(np.uint8) * 255))
    return out
