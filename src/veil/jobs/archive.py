"""Archive inputs: recognise zip/tar uploads and expand them safely into one flat folder.

A job's input may be an archive of images and videos. Only regular files at the archive's root
are accepted; everything else is refused with an `ArchiveError` whose message names the member
and the problem:

- folders and members inside folders (`a/b.jpg`); a leading `./` is fine (`tar -cf x.tar .`);
- unsafe names: `..`, absolute paths, drive letters (`C:`), backslashes, control characters;
- symlinks, hard links, devices, FIFOs; encrypted zip members; duplicate names;
- nested archives (a member whose *content* is a zip, tar, gzip, bzip2, xz, 7z or rar);
- decompression bombs: too many members, too many bytes in total, or a compression ratio above
  the limit. The limits are checked from the headers first and enforced again on the bytes
  actually written, so an archive that lies in its headers is stopped too.

Operating-system junk is skipped silently: anything under `__MACOSX/`, AppleDouble files
(`._name`), `.DS_Store`, `Thumbs.db` and `desktop.ini`.

7z and rar archives are recognised (so the user gets a clear message) but refused: no light,
well-kept pure-Python reader exists for them (py7zr pulls in nine compiled dependencies).

Nothing is ever written outside `dest`: member names are validated to bare file names, files are
created with O_EXCL (an existing file or symlink in `dest` is never followed or overwritten), and
on any error the files already extracted are removed again.
"""

from __future__ import annotations

import lzma
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from pydantic import BaseModel, Field

_CHUNK = 1024 * 1024

# Magic numbers of the container/compression formats we recognise (content, never the file name).
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),  # empty zip
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (257, b"ustar", "tar"),
]
_SNIFF_BYTES = 512
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class ArchiveError(Exception):
    """The archive cannot be accepted; the message names the member and the problem."""


class ArchiveLimits(BaseModel):
    """Decompression-bomb protection. Ratios are only checked once a member (or the whole
    archive) has produced `ratio_floor_bytes`, so small highly compressible files pass."""

    max_members: int = Field(1000, ge=1, description="Most entries in an archive (junk included).")
    max_total_bytes: int = Field(8 * 1024**3, ge=1, description="Most uncompressed bytes in total.")
    max_member_ratio: float = Field(200.0, gt=1, description="Most uncompressed/compressed per member (zip).")
    max_total_ratio: float = Field(200.0, gt=1, description="Most uncompressed bytes per byte of archive.")
    ratio_floor_bytes: int = Field(1024 * 1024, ge=0, description="Ratios apply above this many bytes.")


@dataclass(frozen=True)
class Member:
    """One accepted root-level regular file of an archive."""

    name: str
    size: int  # as declared in the header
    compressed_size: int | None  # per member for zip; None for tar
    open: Callable[[], IO[bytes]]  # readable (and seekable) stream of the member's content


def archive_format(head: bytes) -> str | None:
    """The archive/compression format these leading bytes belong to, or None."""
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


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


def iter_member_files(path: Path, limits: ArchiveLimits | None = None,
                      work_dir: Path | None = None) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield `(name, file)` for each accepted member, one at a time, with every check of
    `expand_archive`. Each member is copied into an anonymous temporary file (in `work_dir`,
    rewound and seekable) that is gone once the next member is read: at most one member is on
    disk at any time, and nothing is ever named in a folder."""
    limits = limits or ArchiveLimits()
    copy = _CheckedCopy(path, limits)
    with closing(iter_members(path, limits)) as members:
        for member in members:
            with tempfile.TemporaryFile(dir=work_dir) as tmp:
                copy(member, tmp)
                tmp.seek(0)
                yield member.name, tmp


def iter_members(path: Path, limits: ArchiveLimits | None = None) -> Iterator[Member]:
    """Yield the archive's accepted members, validating every entry as it goes.

    Raises `ArchiveError` for a refused entry. Only headers are checked here (names, types,
    sizes, ratios); the content checks (nested archives, bytes actually produced) are done while
    copying, by `expand_archive` and `iter_member_files`.
    """
    limits = limits or ArchiveLimits()
    with open(path, "rb") as f:
        fmt = archive_format(f.read(_SNIFF_BYTES))
    if fmt in ("7z", "rar"):
        raise ArchiveError(f"{fmt} archives are not supported; please upload a zip or tar archive")
    if fmt == "zip":
        yield from _zip_members(path, limits)
    elif fmt in ("tar", "gzip", "bzip2", "xz"):
        yield from _tar_members(path, fmt, limits)
    else:
        raise ArchiveError("not an archive (expected zip or tar)")


# ----------------------------------------------------------------------------- zip
def _zip_members(path: Path, limits: ArchiveLimits) -> Iterator[Member]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"corrupt zip archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveError(f"too many entries: {len(infos)} (at most {limits.max_members})")
        accepted: list[tuple[str, zipfile.ZipInfo]] = []
        seen: set[str] = set()
        for info in infos:  # every header is checked before anything is extracted
            kind = "folder" if info.is_dir() else _unix_kind(info.external_attr >> 16)
            name = _accept_name(info.filename, kind, seen)
            if name is None:
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{name!r}: encrypted archive members are not supported")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                          zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
                raise ArchiveError(f"{name!r}: unsupported zip compression method {info.compress_type}")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_member_ratio:
                raise ArchiveError(_ratio_message(name, ratio, limits.max_member_ratio))
            accepted.append((name, info))
        declared = sum(info.file_size for _, info in accepted)
        if declared > limits.max_total_bytes:
            raise ArchiveError(
                f"archive expands to {declared} bytes, more than the limit of {limits.max_total_bytes}")
        archive_bytes = max(path.stat().st_size, 1)
        if declared > limits.ratio_floor_bytes and declared / archive_bytes > limits.max_total_ratio:
            raise ArchiveError(
                f"archive expands {declared / archive_bytes:.0f} times its size "
                f"(at most {limits.max_total_ratio:.0f}): refused as a possible decompression bomb")
        for name, info in accepted:
            yield Member(name, info.file_size, info.compress_size, lambda info=info: zf.open(info))


def _unix_kind(mode: int) -> str:
    """Kind of a zip entry from its Unix mode bits (no type bits, as from Windows tools or
    Python's `writestr`: a regular file)."""
    if stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


# ----------------------------------------------------------------------------- tar
def _tar_members(path: Path, fmt: str, limits: ArchiveLimits) -> Iterator[Member]:
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        what = "tar archive" if fmt == "tar" else f"{fmt}-compressed file (expected a tar archive inside)"
        raise ArchiveError(f"corrupt or unsupported {what}: {exc}") from None
    with tf:
        seen: set[str] = set()
        count = declared = 0
        try:
            for info in tf:  # sequential: headers are read as we go, never all at once
                count += 1
                if count > limits.max_members:
                    raise ArchiveError(f"too many entries: more than {limits.max_members}")
                name = _accept_name(info.name, _tar_kind(info), seen)
                if name is None:
                    continue
                declared += info.size
                if declared > limits.max_total_bytes:
                    raise ArchiveError(f"{name}: archive expands to more than the limit of "
                                       f"{limits.max_total_bytes} bytes")
                yield Member(name, info.size, None, lambda info=info: tf.extractfile(info))
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise ArchiveError(f"corrupt tar archive: {exc}") from None


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "folder"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hard link"
    if info.isreg():
        return "file"
    return "special file"


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
    if "\\" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") \
            or ".." in raw.replace("\\", "/").split("/"):
        raise ArchiveError(f"{raw!r}: unsafe member name (absolute path, '..', drive letter or backslash)")
    if any(unicodedata.category(c) == "Cc" for c in raw):
        raise ArchiveError(f"{raw!r}: member name contains control characters")
    if kind == "folder":
        raise ArchiveError(f"{raw!r}: folders are not supported; put all files at the archive's root")
    if "/" in name:
        raise ArchiveError(f"{raw!r}: is inside a folder; put all files at the archive's root")
    if kind != "file":
        raise ArchiveError(f"{raw!r}: is a {kind}; only regular files are accepted")
    if name in seen:
        raise ArchiveError(f"{raw!r}: duplicate file name in the archive")
    seen.add(name)
    return name


def _refuse_nested(name: str, head: bytes) -> None:
    fmt = archive_format(head)
    if fmt is not None:
        raise ArchiveError(f"{name!r}: is itself an archive ({fmt}); nested archives are not supported")


class _CheckedCopy:
    """Copies members out of one archive, enforcing the limits on the bytes actually produced."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.archive_bytes = max(path.stat().st_size, 1)
        self.total = 0

    def __call__(self, member: Member, out: IO[bytes]) -> None:
        member_bytes = 0
        with _open_member(member) as src:
            while chunk := _read(src, member.name):
                if member_bytes == 0:
                    _refuse_nested(member.name, chunk)
                member_bytes += len(chunk)
                self.total += len(chunk)
                _check_written(member, member_bytes, self.total, self.archive_bytes, self.limits)
                out.write(chunk)


def _check_written(member: Member, member_bytes: int, total: int, archive_bytes: int,
                   limits: ArchiveLimits) -> None:
    """Limits on the bytes actually produced, whatever the headers claimed."""
    if total > limits.max_total_bytes:
        raise ArchiveError(f"{member.name!r}: archive expands to more than the limit of "
                           f"{limits.max_total_bytes} bytes")
    if member_bytes > member.size:
        raise ArchiveError(f"{member.name!r}: holds more data than its header declares")
    if member.compressed_size is not None and member_bytes > limits.ratio_floor_bytes:
        ratio = member_bytes / max(member.compressed_size, 1)
        if ratio > limits.max_member_ratio:
            raise ArchiveError(_ratio_message(member.name, ratio, limits.max_member_ratio))
    if total > limits.ratio_floor_bytes and total / archive_bytes > limits.max_total_ratio:
        raise ArchiveError(f"{member.name!r}: archive expands more than {limits.max_total_ratio:.0f} "
                           "times its size: refused as a possible decompression bomb")


def _ratio_message(name: str, ratio: float, limit: float) -> str:
    return (f"{name!r}: compression ratio {ratio:.0f} exceeds {limit:.0f}: "
            "refused as a possible decompression bomb")


# Errors a corrupt member can raise while it is opened or read.
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError,
                NotImplementedError, RuntimeError, OSError)


def _open_member(member: Member) -> IO[bytes]:
    try:
        return member.open()
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{member.name!r}: cannot be read from the archive: {exc}") from None


def _read(src: IO[bytes], name: str) -> bytes:
    try:
        return src.read(_CHUNK)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{name!r}: corrupt data in the archive: {exc}") from None


@contextmanager
def _create(target: Path) -> Iterator[IO[bytes]]:
    """Create a new file exclusively (never follows or replaces an existing file or symlink)."""
    try:
        f = open(target, "xb")
    except FileExistsError:
        raise ArchiveError(f"{target.name!r}: a file of that name already exists in the destination") from None
    with f:
        yield f
