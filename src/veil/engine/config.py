"""`ModelConfig`: the seed API's `model_config`, plus Veil's documented extensions.

The same object drives the CLI, the HTTP API and the engine; field names are the seed's.
Unknown keys, out-of-range values, NaN/Infinity and values of the wrong JSON type (`"yes"` for a bool,
`false` for an int, `"0.5"` for a float) are rejected: pydantic raises, the API answers 422. The CLI
passes typed values (click converts its options), so strict mode costs it nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # --- the seed's options (names as documented by the vendor; defaults too, except enable_lp and lp_track:
    #     plates are found and tracked unless a client turns that off, see docs/api.md) ---
    blur_face: bool = Field(True, description="Anonymize faces.")
    blur_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Face detection threshold on Veil's calibrated scale: 0 keeps every candidate, "
        "0.5 is the high-recall default, 1 keeps only certain detections.",
    )
    lp_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Licence-plate threshold on the same calibrated scale."
    )
    enable_lp: bool = Field(
        True,
        description="Anonymize vehicle licence plates (on unless `false` is sent: the "
        "vendor's pages disagree on the default, Veil takes the privacy-safe one).",
    )
    mask_blur: bool = Field(
        True,
        description="Blur inside a feathered ellipse (faces) / rounded rectangle (plates); "
        "false draws the seed's circle blur around each detection.",
    )
    slicing: bool = Field(False, description="Tiled inference for high-resolution images and videos.")
    lp_track: bool = Field(
        True,
        description="Track plates across video frames, so a plate missed for a few frames "
        "stays blurred (on unless `false` is sent, like face_track; the vendor documents false).",
    )

    # --- Veil extensions (README "What gets anonymized", docs/api.md) ---
    face_track: bool = Field(True, description="Track faces across video frames (extension).")
    style: Literal["blur", "pixelate", "solid"] = Field(
        "blur", description="How a detected region is made unrecognisable (extension)."
    )
    video_crf: int = Field(
        20, ge=0, le=51, description="H.264 constant rate factor for video output; lower is better quality (extension)."
    )
    review: bool = Field(
        False,
        description="The service detects, then waits for a reviewer's render call before "
        "writing any output (extension; the engine ignores it).",
    )

    @property
    def wants_faces(self) -> bool:
        return self.blur_face

    @property
    def wants_plates(self) -> bool:
        return self.enable_lp


@dataclass(frozen=True)
class MediaLimits:
    """The largest pictures the engine decodes: checked from the file's header, before any pixel is decoded
    (`VEIL_MAX_IMAGE_PIXELS`, `VEIL_MAX_VIDEO_FRAME_PIXELS` in the service and the CLI).

    120 MP takes every 35 mm and most medium-format camera (Fujifilm GFX100: 102 MP); decoding,
    detection and redaction need about 13 bytes a pixel (a 99 MP PNG: 1.3 GB, 14 s), so about 1.6 GB.
    Video frames are decoded, queued and re-encoded several at a time: DCI 8K (8192 x 4320) at most."""

    max_image_pixels: int = 120_000_000
    max_video_frame_pixels: int = 8192 * 4320
    max_video_frames: int = 0  # the frames this video was priced for (the service sets it per file); 0: no bound

    @classmethod
    def from_settings(cls, settings) -> MediaLimits:
        """Built from `veil.settings`' VEIL_MAX_IMAGE_PIXELS and VEIL_MAX_VIDEO_FRAME_PIXELS."""
        return cls(max_image_pixels=settings.max_image_pixels, max_video_frame_pixels=settings.max_video_frame_pixels)
