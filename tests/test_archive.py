"""Archive expansion: accepted layouts, refused ones, and decompression bombs."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from veil.jobs.archive import ArchiveError, ArchiveLimits, expand_archive, is_archive, iter_members

FILES = {"a.jpg": b"\xff\xd8\xff\xe0 fake jpeg " + os.urandom(3000), "b.png": b"\x89PNG\r\n\x1a\n" + os.urandom(2000),
         "c.mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000)}


def _zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _assert_empty_and_contained(tmp_path: Path, dest: Path) -> None:
    """Nothing extracted into dest, nothing written next to it (outside dest)."""
    assert not dest.exists() or list(dest.iterdir()) == []
    outside = {p.name for p in tmp_path.iterdir()} - {dest.name, "in.zip", "in.tar", "in.tar.gz", "inner.zip"}
    assert outside == set(), f"written outside dest: {outside}"


@pytest.mark.parametrize("maker,name", [
    (lambda p: _zip(p, FILES), "in.zip"),
    (lambda p: _zip(p, FILES, zipfile.ZIP_STORED), "in.zip"),
    (lambda p: _tar(p, FILES), "in.tar"),
    (lambda p: _tar(p, FILES, "w:gz"), "in.tar.gz"),
    (lambda p: _tar(p, FILES, "w:bz2"), "in.tar.bz2"),
    (lambda p: _tar(p, FILES, "w:xz"), "in.tar.xz"),
])
def test_expands_root_files(tmp_path: Path, maker, name: str) -> None:
    archive = maker(tmp_path / name)
    assert is_archive(archive)
    out = expand_archive(archive, tmp_path / "out")
    assert [p.name for p in out] == list(FILES)
    for p in out:
        assert p.parent == tmp_path / "out"
        assert p.read_bytes() == FILES[p.name]


def test_leading_dot_slash_and_os_junk(tmp_path: Path) -> None:
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tf:  # like `tar -cf in.tar .` on a Mac
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tf.addfile(root)
        for name, data in [("./a.jpg", FILES["a.jpg"]), ("./.DS_Store", b"junk"), ("./._a.jpg", b"junk")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert [p.name for p in expand_archive(archive, tmp_path / "out")] == ["a.jpg"]

    zipped = _zip(tmp_path / "in.zip", {"a.jpg": b"x", "__MACOSX/._a.jpg": b"j", "Thumbs.db": b"j"})
    assert [p.name for p in expand_archive(zipped, tmp_path / "out2")] == ["a.jpg"]


def test_not_archives(tmp_path: Path) -> None:
    for name, data in [("x.jpg", FILES["a.jpg"]), ("x.mp4", FILES["c.mp4"]), ("empty", b"")]:
        (tmp_path / name).write_bytes(data)
        assert not is_archive(tmp_path / name)
    with pytest.raises(ArchiveError, match="not an archive"):
        expand_archive(tmp_path / "x.jpg", tmp_path / "out")


@pytest.mark.parametrize("members,problem", [
    ({"a.jpg": b"x", "inner.zip": b""}, "nested archives"),
    ({"a.jpg": b"x", "sub/b.jpg": b"y"}, "inside a folder"),
    ({"../x.jpg": b"x"}, "unsafe member name"),
    ({"/etc/x.jpg": b"x"}, "unsafe member name"),
    ({"C:x.jpg": b"x"}, "unsafe member name"),
    ({"dir\\x.jpg": b"x"}, "unsafe member name"),
    ({"a.jpg": b"x", "./a.jpg": b"y"}, "duplicate"),
])
def test_refused_zip(tmp_path: Path, members: dict[str, bytes], problem: str) -> None:
    if "inner.zip" in members:
        members["inner.zip"] = _zip(tmp_path / "inner.zip", {"z.jpg": b"z"}).read_bytes()
    archive = _zip(tmp_path / "in.zip", members)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=problem) as err:
        expand_archive(archive, dest)
    bad = [n for n in members if n not in ("a.jpg",)][0]
    assert repr(bad) in str(err.value) or bad in str(err.value)  # the message names the member
    _assert_empty_and_contained(tmp_path, dest)


def test_folder_entry_refused(tmp_path: Path) -> None:
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", b"x")
        zf.mkdir("photos")
    with pytest.raises(ArchiveError, match="'photos/': folders are not supported"):
        expand_archive(archive, tmp_path / "out")
    _assert_empty_and_contained(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("kind,problem", [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link"),
                                          (tarfile.CHRTYPE, "special file"), (tarfile.FIFOTYPE, "special file")])
def test_links_and_devices_in_tar_refused(tmp_path: Path, kind: bytes, problem: str) -> None:
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("evil.jpg")
        link.type = kind
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=f"'evil.jpg': is a {problem}"):
        expand_archive(archive, dest)
    _assert_empty_and_contained(tmp_path, dest)


def test_symlink_in_zip_refused(tmp_path: Path) -> None:
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'link.jpg': is a symlink"):
        expand_archive(archive, tmp_path / "out")


def test_zip_slip_in_tar_gz(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "in.tar.gz", {"a.jpg": b"x", "../../escape.jpg": b"y"}, "w:gz")
    dest = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveError, match="unsafe member name"):
        expand_archive(archive, dest)
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "deep" / "escape.jpg").exists()
    assert list(dest.iterdir()) == []


def test_nested_tar_gz_inside_tar(tmp_path: Path) -> None:
    inner = _tar(tmp_path / "inner.tgz", {"z.jpg": b"z"}, "w:gz").read_bytes()
    archive = _tar(tmp_path / "in.tar", {"a.jpg": b"x", "photos.dat": inner})
    with pytest.raises(ArchiveError, match="'photos.dat': is itself an archive \\(gzip\\)"):
        expand_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_bomb_refused_from_headers(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "in.zip", {"a.jpg": b"x", "bomb.jpg": bytes(64 * 1024 * 1024)})
    assert archive.stat().st_size < 200_000
    with pytest.raises(ArchiveError, match="'bomb.jpg': compression ratio \\d+ exceeds 200.*decompression bomb"):
        expand_archive(archive, tmp_path / "out")
    _assert_empty_and_contained(tmp_path, tmp_path / "out")


def test_zip_whose_headers_understate_the_size(tmp_path: Path) -> None:
    """A central directory claiming 1000 bytes for a 64 MiB member: never more than declared is written."""
    archive = _zip(tmp_path / "in.zip", {"a.jpg": b"x", "bomb.jpg": bytes(64 * 1024 * 1024)})
    data = bytearray(archive.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last central-directory entry is bomb.jpg
    assert data[entry + 46:entry + 54] == b"bomb.jpg"
    data[entry + 24:entry + 28] = (1000).to_bytes(4, "little")  # uncompressed size
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="'bomb.jpg': corrupt data"):
        expand_archive(archive, dest)
    _assert_empty_and_contained(tmp_path, dest)


def test_tar_gz_bomb_stopped_while_extracting(tmp_path: Path) -> None:
    """tar.gz has no per-member compressed size: the overall ratio stops it mid-write."""
    archive = _tar(tmp_path / "in.tar.gz", {"bomb.jpg": bytes(32 * 1024 * 1024)}, "w:gz")
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="'bomb.jpg': archive expands more than 200 times"):
        expand_archive(archive, dest)
    _assert_empty_and_contained(tmp_path, dest)


def test_total_size_and_member_count_limits(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "in.zip", FILES, zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="more than the limit of 5000"):
        expand_archive(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=5000))
    with pytest.raises(ArchiveError, match="too many entries"):
        expand_archive(archive, tmp_path / "out", ArchiveLimits(max_members=2))
    tar = _tar(tmp_path / "in.tar", FILES)
    with pytest.raises(ArchiveError, match="more than the limit of 5000"):
        expand_archive(tar, tmp_path / "out", ArchiveLimits(max_total_bytes=5000))
    with pytest.raises(ArchiveError, match="too many entries"):
        expand_archive(tar, tmp_path / "out", ArchiveLimits(max_members=2))
    assert list((tmp_path / "out").iterdir()) == []


def test_7z_and_rar_refused_clearly(tmp_path: Path) -> None:
    for name, magic in [("x.7z", b"7z\xbc\xaf\x27\x1c\x00\x04"), ("x.rar", b"Rar!\x1a\x07\x01\x00")]:
        (tmp_path / name).write_bytes(magic + bytes(100))
        assert is_archive(tmp_path / name)
        with pytest.raises(ArchiveError, match="archives are not supported; please upload a zip or tar"):
            expand_archive(tmp_path / name, tmp_path / "out")


def test_corrupt_archives(tmp_path: Path) -> None:
    good = _zip(tmp_path / "in.zip", FILES).read_bytes()
    (tmp_path / "trunc.zip").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match="corrupt zip"):
        expand_archive(tmp_path / "trunc.zip", tmp_path / "out")
    (tmp_path / "x.jpg.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(50))
    with pytest.raises(ArchiveError, match="expected a tar archive inside"):
        expand_archive(tmp_path / "x.jpg.gz", tmp_path / "out")
    gz = _tar(tmp_path / "in.tar.gz", FILES, "w:gz").read_bytes()
    (tmp_path / "trunc.tar.gz").write_bytes(gz[: len(gz) - 3000])
    with pytest.raises(ArchiveError, match="corrupt"):
        expand_archive(tmp_path / "trunc.tar.gz", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_file_in_dest_is_never_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "secret").write_text("keep")
    (dest / "b.png").symlink_to(tmp_path / "secret")
    with pytest.raises(ArchiveError, match="already exists"):
        expand_archive(_zip(tmp_path / "in.zip", FILES), dest)
    assert (tmp_path / "secret").read_text() == "keep"
    assert sorted(p.name for p in dest.iterdir()) == ["b.png"]  # a.jpg removed again


def test_iter_members_lists_without_extracting(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "in.tar.gz", FILES, "w:gz")
    names = []
    for m in iter_members(archive):
        with m.open() as f:
            assert f.read() == FILES[m.name]
        names.append(m.name)
    assert names == list(FILES)
