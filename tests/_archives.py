"""Test archives in every accepted format: zip and tar written with libarchive, 7z with py7zr (libarchive
3.6's 7-Zip writer crashes on symlinks) and RAR, which nothing installable here writes, with a minimal
RAR 4 writer of stored members (`write_rar4`)."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path

import libarchive
import py7zr
from libarchive.entry import FileType

FORMATS = ("zip", "tar", "tar.gz", "7z", "rar")
_LIBARCHIVE = {"zip": ("zip", None), "tar": ("pax", None), "tar.gz": ("pax", "gzip")}
_TYPES = {
    "file": FileType.REGULAR_FILE,
    "folder": FileType.DIRECTORY,
    "symlink": getattr(FileType, "SYMBOLIC_LINK", None) or FileType.SYMBOLINK_LINK,
}  # 5.3 spells it so


def write_archive(path: Path, fmt: str, members: list[tuple[str, bytes | str | None]]) -> Path:
    """`members`: (name, content) with content bytes for a file, None for a folder, a str for a symlink
    pointing there. Returns `path`."""
    if fmt == "rar":
        return write_rar4(path, members)
    if fmt == "7z":
        return write_7z(path, members)
    format_name, filter_name = _LIBARCHIVE[fmt]
    with libarchive.file_writer(str(path), format_name, filter_name) as archive:
        for name, content in members:
            kind = "folder" if content is None else "symlink" if isinstance(content, str) else "file"
            extra = {"linkpath": content} if kind == "symlink" else {}
            data = content if kind == "file" else b""
            archive.add_file_from_memory(
                name, len(data), data, filetype=_TYPES[kind], permission=0o755 if kind == "folder" else 0o644, **extra
            )
    return path


def write_7z(path: Path, members: list[tuple[str, bytes | str | None]]) -> Path:
    with tempfile.TemporaryDirectory() as tmp, py7zr.SevenZipFile(path, "w") as archive:
        for index, (name, content) in enumerate(members):
            source = Path(tmp) / str(index)
            if content is None:
                source.mkdir()
            elif isinstance(content, str):  # py7zr needs the target to exist
                (Path(tmp) / content).touch()
                os.symlink(content, source)
            else:
                source.write_bytes(content)
            archive.write(source, name)
    return path


def write_rar4(path: Path, members: list[tuple[str, bytes | str | None]]) -> Path:
    """A RAR 4 archive of stored (uncompressed) members, as documented in RAR's technote.txt: marker block,
    main header, one file header per member (Unix host, method 0x30 "store"), end-of-archive block."""

    def block(head_type: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
        header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, content in members:
        raw = name.encode("utf-8")
        if content is None:
            data, mode, flags = b"", stat.S_IFDIR | 0o755, 0x8000 | 0x00E0
        elif isinstance(content, str):
            data, mode, flags = content.encode(), stat.S_IFLNK | 0o777, 0x8000
        else:
            data, mode, flags = content, stat.S_IFREG | 0o644, 0x8000
        body = (
            struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A210000, 20, 0x30, len(raw), mode)
            + raw
        )
        out += block(0x74, flags, body, data)
    path.write_bytes(out + block(0x7B, 0x4000, b""))
    return path
