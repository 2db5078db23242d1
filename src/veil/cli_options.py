"""The `model_config` options of `veil anonymize`, `detect`, `render` and `submit`: one flag per ModelConfig
field (same names as the API, with dashes), `--config` as JSON text or a JSON file, and errors that name
what the user typed (the flag, or the key in --config, with the nearest known key for a misspelt one)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import click
from pydantic import ValidationError

from .engine.config import ModelConfig

_DETECTION = [
    click.option("--config", "config_json", help="model_config as JSON text or a JSON file."),
    click.option("--blur-face/--no-blur-face", default=None, help="Anonymize faces (default on)."),
    click.option(
        "--blur-threshold", type=click.FloatRange(0, 1), help="Face threshold, calibrated 0..1 (default 0.5)."
    ),
    click.option("--enable-lp/--no-enable-lp", default=None, help="Anonymize licence plates (default on)."),
    click.option("--lp-threshold", type=click.FloatRange(0, 1), help="Plate threshold, calibrated 0..1 (default 0.5)."),
    click.option("--slicing/--no-slicing", default=None, help="Tiled inference for high resolution."),
    click.option("--lp-track/--no-lp-track", default=None, help="Track plates across video frames (default on)."),
    click.option("--face-track/--no-face-track", default=None, help="Track faces across video frames."),
]
_OUTPUT = [
    click.option(
        "--mask-blur/--circle-blur",
        "mask_blur",
        default=None,
        help="Feathered ellipse/rounded-rectangle mask (default) or the seed's circle blur.",
    ),
    click.option("--style", type=click.Choice(["blur", "pixelate", "solid"]), help="Redaction style."),
    click.option("--video-crf", type=click.IntRange(0, 51), help="H.264 CRF for video output (default 20)."),
]
_KEYS = (
    "blur_face",
    "blur_threshold",
    "enable_lp",
    "lp_threshold",
    "mask_blur",
    "slicing",
    "lp_track",
    "face_track",
    "style",
    "video_crf",
)


def config_options(func=None, *, output: bool = True):
    """The ModelConfig fields as flags; `output=False` leaves out those that only shape a written file
    (`--mask-blur`, `--style`, `--video-crf`), for `veil detect`."""

    def decorate(func):
        for option in reversed(_DETECTION + (_OUTPUT if output else [])):
            func = option(func)
        return func

    return decorate(func) if func is not None else decorate


def split_config(kwargs: dict) -> tuple[ModelConfig, dict]:
    """(the ModelConfig of --config plus the flags given, the command's other arguments)."""
    flags = {k: v for k in _KEYS if (v := kwargs.pop(k, None)) is not None}
    return model_config(kwargs.pop("config_json"), flags), kwargs


def model_config_dict(config_json: str | None) -> dict:
    """--config as a dict: JSON text or a path to a JSON file."""
    if not config_json:
        return {}
    path = Path(config_json)
    if path.is_file():
        text = path.read_text()
    elif config_json.lstrip()[:1] in ("{", "["):
        text = config_json
    else:
        raise click.BadParameter(
            f"file {config_json!r} does not exist (give a JSON file, or JSON text such as "
            "'{\"blur_threshold\": 0.4}')",
            param_hint="--config",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--config")
    return data


def model_config(config_json: str | None, flags: dict) -> ModelConfig:
    """A ModelConfig from --config (JSON text or a JSON file) with the flags given on top."""
    data = model_config_dict(config_json)
    data.update(flags)
    try:
        return ModelConfig(**data)
    except ValidationError as exc:
        keys = [str(error["loc"][0]) if error["loc"] else "" for error in exc.errors()]
        hint = "--" + keys[0].replace("_", "-") if keys and keys[0] in flags else "--config"
        raise click.BadParameter("; ".join(_explain(error) for error in exc.errors()), param_hint=hint) from None


def _explain(error: dict) -> str:
    """One pydantic error in the words of --config: the key, and for an unknown one the nearest known key."""
    key = str(error["loc"][0]) if error["loc"] else "model_config"
    if error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(key, list(ModelConfig.model_fields), n=1)
        return f"unknown key {key!r}" + (
            f", did you mean {near[0]!r}?" if near else f" (known: {', '.join(ModelConfig.model_fields)})"
        )
    return f"{key}: {error['msg']}"
