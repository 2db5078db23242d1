"""Archive inputs: recognise zip, tar, 7z and rar uploads and expand them safely into one flat folder.

Every format is read by one code path, libarchive (through `libarchive-c`; the system's
`libarchive13`), entry by entry, so every rule below holds the same way for all of them. Only
regular files at the archive's root are accepted; everything else is refused with an
`ArchiveError` whose message names the member and the problem:

- folders and members inside folders (`a/b.jpg`); a leading `./` is fine (`tar -cf x.tar .`);
- unsafe names: `..`, absolute paths, drive letters (`C:`), backslashes, control characters, names
  over 255 bytes in UTF-8 (no file system could store them);
- symlinks, hard links, devices, FIFOs; encrypted members; duplicate names;
- nested archives (a member whose *content* is a zip, tar, gzip, bzip2, xz, 7z or rar);
- decompression bombs: too many members, too many bytes in total, or more bytes than
  `max_total_ratio` times the archive's size. The limits are checked from each header first and
  enforced again on the bytes actually produced, so an archive that lies in its headers is stopped too.

Operating-system junk is skipped silently: anything under `__MACOSX/`, AppleDouble files
(`._name`), `.DS_Store`, `Thumbs.db` and `desktop.ini`.

The kind of archive is decided by its first bytes (never its name), and libarchive is told that
one format only: a text file is never read as an `mtree` archive, a gzip of a single photo is
"not a tar archive". RAR support is libarchive's: RAR 4 (not solid) and RAR 5.

Nothing is ever written outside `dest`: member names are validated to bare file names, files are
created with O_EXCL (an existing file or symlink in `dest` is never followed or overwritten), and
on any error the files already extracted are removed again.
"""

from __future__ import annotations

import ctypes
import functools
import tempfile
import unicodedata
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import libarchive
import libarchive.exception
import libarchive.ffi
from pydantic import BaseModel, Field

from ..engine.probe import ARCHIVE_SNIFF_BYTES as _SNIFF_BYTES
from ..engine.probe import archive_format

_CHUNK = 1024 * 1024
MAX_NAME_BYTES = 255  # a file name on every common file system

# libarchive's reader for each: (format, filter). Compressed streams must hold a tar archive.
_READERS = {
    "zip": ("zip", "none"),
    "7z": ("7zip", "none"),
    "rar": ("rar", "none"),
    "rar5": ("rar5", "none"),
    "tar": ("tar", "none"),
    "gzip": ("tar", "gzip"),
    "bzip2": ("tar", "bzip2"),
    "xz": ("tar", "xz"),
}
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}

_is_encrypted = libarchive.ffi.libarchive.archive_entry_is_encrypted
_is_encrypted.argtypes, _is_encrypted.restype = [ctypes.c_void_p], ctypes.c_int


class ArchiveError(Exception):
    """The archive cannot be accepted; the message names the member and the problem."""


class ArchiveLimits(BaseModel):
    """Decompression-bomb protection. The ratio is only checked once the archive has produced
    `ratio_floor_bytes`, so small highly compressible archives pass."""

    max_members: int = Field(1000, ge=1, description="Most entries in an archive (junk included).")
    max_total_bytes: int = Field(8 * 1024**3, ge=1, description="Most uncompressed bytes in total.")
    max_total_ratio: float = Field(200.0, gt=1, description="Most uncompressed bytes per byte of archive.")
    ratio_floor_bytes: int = Field(1024 * 1024, ge=0, description="The ratio applies above this many bytes.")


@dataclass(frozen=True)
class Member:
    """One accepted root-level regular file of an archive; `blocks()` is readable until the next member."""

    name: str
    size: int | None  # as declared in the header (None when the format does not say)
    blocks: Callable[[], Iterator[bytes]]


def is_archive(path: Path) -> bool:
    """True when the file's content is a zip, tar (plain, gzip, bzip2, xz), 7z or rar archive."""
    with open(path, "rb") as f:
        return archive_format(f.read(_SNIFF_BYTES)) is not None


def expand_archive(path: Path, dest: Path, limits: ArchiveLimits | None = None) -> list[Path]:
    """Extract the root-level regular files of `path` into `dest` (created if missing).

    Returns the extracted files in archive order. Raises `ArchiveError` when the archive is
    refused; no file of this call is left behind then.
    """
    limits = limits or ArchiveLimits()
    dest.mkdir(parents=True, exist_ok=True)
    copy = _CheckedCopy(path, limits)
    written: list[Path] = []
    try:
        with closing(iter_members(path, limits)) as members:
            for member in members:
                target = dest / member.name
                with _create(target) as out:
                    written.append(target)
                    copy(member, out)
        return written
    except BaseException:
        for file in written:
            file.unlink(missing_ok=True)
        raise


def iter_member_files(
    path: Path, limits: ArchiveLimits | None = None, work_dir: Path | None = None
) -> Iterator[tuple[str, Path]]:
    """Yield `(name, file)` for each accepted member, one at a time, with every check of
    `expand_archive`. Each member is copied into a temporary file with a neutral name (in a private
    folder inside `work_dir`) that is gone once the next member is read: at most one member is on
    disk at any time."""
    limits = limits or ArchiveLimits()
    copy = _CheckedCopy(path, limits)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, closing(iter_members(path, limits)) as members:
        for index, member in enumerate(members):
            suffix = Path(member.name).suffix  # FFmpeg weighs the extension when it guesses a format
            file = Path(tmp) / f"member{index}{suffix if suffix[1:].isalnum() and len(suffix) <= 10 else ''}"
            try:
                with file.open("wb") as out:
                    copy(member, out)
                yield member.name, file
            finally:
                file.unlink(missing_ok=True)


def iter_members(path: Path, limits: ArchiveLimits | None = None) -> Generator[Member, None, None]:
    """Yield the archive's accepted members, validating every entry as it goes.

    Raises `ArchiveError` for a refused entry. Only headers are checked here (names, types,
    declared sizes); the content checks (nested archives, bytes actually produced) are done while
    copying, by `expand_archive` and `iter_member_files`.
    """
    limits = limits or ArchiveLimits()
    with open(path, "rb") as f:
        fmt = archive_format(f.read(_SNIFF_BYTES))
    if fmt is None:
        raise ArchiveError("not an archive (expected zip, tar, 7z or rar)")
    archive_bytes = max(path.stat().st_size, 1)
    seen: set[str] = set()
    count = declared = 0
    try:
        with libarchive.file_reader(str(path), *_READERS[fmt]) as archive:
            for entry in archive:
                count += 1
                if count > limits.max_members:
                    raise ArchiveError(f"too many entries: more than {limits.max_members}")
                name = _accept_name(_pathname(entry), _kind(entry), seen)
                if name is None:
                    continue
                if _is_encrypted(entry._entry_p):
                    raise ArchiveError(f"{name!r}: encrypted archive members are not supported")
                declared += entry.size or 0
                if declared > limits.max_total_bytes:
                    raise ArchiveError(
                        f"{name!r}: archive expands to more than the limit of {limits.max_total_bytes} bytes"
                    )
                if declared > limits.ratio_floor_bytes and declared / archive_bytes > limits.max_total_ratio:
                    raise ArchiveError(_ratio_message(name, limits))
                yield Member(name, entry.size, functools.partial(entry.get_blocks, _CHUNK))
    except libarchive.exception.ArchiveError as exc:
        raise ArchiveError(_corrupt_message(fmt, exc, path)) from None


def _pathname(entry) -> str:
    name = entry.pathname
    if isinstance(name, bytes):  # neither the locale's charset nor UTF-8
        return name.decode("utf-8", "replace")
    return name or ""


def _kind(entry) -> str:
    if entry.isdir:
        return "folder"
    if entry.issym:
        return "symlink"
    if entry.islnk:
        return "hard link"
    if entry.isreg:
        return "file"
    return "special file"


def _corrupt_message(fmt: str, exc: libarchive.exception.ArchiveError, path: Path) -> str:
    reason = str(exc.msg or "unreadable").replace(str(path), "the archive")
    if fmt in ("gzip", "bzip2", "xz"):
        return f"corrupt or unsupported {fmt}-compressed file (expected a tar archive inside): {reason}"
    return f"corrupt or unsupported {fmt.rstrip('5')} archive: {reason}"


# ----------------------------------------------------------------------------- checks
def _accept_name(raw: str, kind: str, seen: set[str]) -> str | None:
    """The member's bare file name if it is acceptable, None if it is junk to skip or the
    archive root itself; raises ArchiveError otherwise."""
    name = raw[2:] if raw.startswith("./") else raw
    if name in ("", ".", "./") and kind == "folder":
        return None  # the archive root ("./" from `tar -cf x.tar .`)
    if name.split("/")[0] == "__MACOSX":
        return None
    if kind == "file" and (name in _JUNK_NAMES or name.startswith("._")):
        return None
    if (
        "\\" in raw
        or raw.startswith("/")
        or (len(raw) > 1 and raw[1] == ":")
        or ".." in raw.replace("\\", "/").split("/")
    ):
        raise ArchiveError(f"{raw!r}: unsafe member name (absolute path, '..', drive letter or backslash)")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in raw):
        raise ArchiveError(f"{_shown(raw)}: member name contains control characters")
    if kind == "folder" or (kind == "file" and name.endswith("/")):
        raise ArchiveError(f"{raw!r}: folders are not supported; put all files at the archive's root")
    if "/" in name:
        raise ArchiveError(f"{raw!r}: is inside a folder; put all files at the archive's root")
    if kind != "file":
        raise ArchiveError(f"{raw!r}: is a {kind}; only regular files are accepted")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ArchiveError(f"{_shown(name)}: member name is longer than {MAX_NAME_BYTES} bytes")
    if name in seen:
        raise ArchiveError(f"{raw!r}: duplicate file name in the archive")
    seen.add(name)
    return name


def _shown(name: str) -> str:
    """A name for a message: quoted, escaped, at most 60 characters."""
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "...'"


def _refuse_nested(name: str, head: bytes) -> None:
    fmt = archive_format(head)
    if fmt is not None:
        raise ArchiveError(f"{name!r}: is itself an archive ({fmt.rstrip('5')}); nested archives are not supported")


class _CheckedCopy:
    """Copies members out of one archive, enforcing the limits on the bytes actually produced."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path = path
        self.limits = limits
        self.archive_bytes = max(path.stat().st_size, 1)
        self.total = 0

    def __call__(self, member: Member, out: IO[bytes]) -> None:
        member_bytes = 0
        head = b""
        try:
            for chunk in member.blocks():
                if len(head) < _SNIFF_BYTES:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                    if len(head) >= _SNIFF_BYTES:
                        _refuse_nested(member.name, head)
                member_bytes += len(chunk)
                self.total += len(chunk)
                self._check(member, member_bytes)
                out.write(chunk)
        except libarchive.exception.ArchiveError as exc:
            reason = str(exc.msg or "unreadable").replace(str(self.path), "the archive")
            raise ArchiveError(f"{member.name!r}: corrupt data in the archive: {reason}") from None
        if len(head) < _SNIFF_BYTES:
            _refuse_nested(member.name, head)

    def _check(self, member: Member, member_bytes: int) -> None:
        limits = self.limits
        if self.total > limits.max_total_bytes:
            raise ArchiveError(
                f"{member.name!r}: archive expands to more than the limit of {limits.max_total_bytes} bytes"
            )
        if member.size is not None and member_bytes > member.size:
            raise ArchiveError(f"{member.name!r}: holds more data than its header declares")
        if self.total > limits.ratio_floor_bytes and self.total / self.archive_bytes > limits.max_total_ratio:
            raise ArchiveError(_ratio_message(member.name, limits))


def _ratio_message(name: str, limits: ArchiveLimits) -> str:
    return (
        f"{name!r}: archive expands more than {limits.max_total_ratio:.0f} times its size: "
        "refused as a possible decompression bomb"
    )


@contextmanager
def _create(target: Path) -> Iterator[IO[bytes]]:
    """Create a new file exclusively (never follows or replaces an existing file or symlink)."""
    try:
        f = open(target, "xb")
    except FileExistsError:
        raise ArchiveError(f"{target.name!r}: a file of that name already exists in the destination") from None
    with f:
        yield f
