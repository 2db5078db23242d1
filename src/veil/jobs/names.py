"""Names: the store's two containers, what a client's file name becomes on disk and in a JobReport, and how
server paths are kept out of the messages that reach the client."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

INPUT_CONTAINER = "uploads"  # the clients' uploads
OUTPUT_CONTAINER = "outputs"  # anonymized files, detections documents, finished segments
MAX_NAME_BYTES = 200  # leaves room, under the file systems' 255 bytes, for "_anonymized_<n>" and temporary names


def safe_name(name: str, default: str = "file") -> str:
    """A bare file name: no directories (either separator), no control or format characters (no U+202E),
    no leading dots, at most MAX_NAME_BYTES bytes in UTF-8 (cut on a character boundary, extension kept)."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name
    base = "".join(c for c in base if c.isprintable() and c not in '<>:"/\\|?*').strip().lstrip(".")
    if len(base.encode("utf-8")) > MAX_NAME_BYTES:
        suffix = PurePosixPath(base).suffix
        suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
        stem = base[: len(base) - len(suffix)].encode("utf-8")[: MAX_NAME_BYTES - len(suffix.encode("utf-8"))]
        base = stem.decode("utf-8", "ignore").rstrip() + suffix
    return base or default


def output_name(input_name: str, taken: set[str] | None = None) -> str:
    """`photo.jpg` → `photo_anonymized.jpg`: the seed's client saves outputs under this name in its working
    directory, so it must not be the input's own name, nor (given the names already `taken` in the job,
    compared case-insensitively, as Windows and macOS do; the new name is added) another output's."""
    path = PurePosixPath(safe_name(input_name))
    name, n = f"{path.stem}_anonymized{path.suffix}", 2
    while taken is not None and name.casefold() in taken:
        name, n = f"{path.stem}_anonymized_{n}{path.suffix}", n + 1
    if taken is not None:
        taken.add(name.casefold())
    return name


def public_message(text: str, *paths: Path) -> str:
    """`text` with every server path in `paths` (and below them) taken out: messages reach the client."""
    for path in sorted({str(p) for p in paths} | {str(Path(p).resolve()) for p in paths}, key=len, reverse=True):
        text = text.replace(path + "/", "").replace(path, "")
    return text
