"""Archive expansion, for every accepted format (zip, tar, tar.gz, 7z, rar) through the one libarchive path:
accepted layouts, refused ones, and decompression bombs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from _archives import FORMATS, write_archive
from veil.jobs.archive import ArchiveError, ArchiveLimits, expand_archive, is_archive, iter_member_files

FILES = {
    "a.jpg": b"\xff\xd8\xff\xe0 fake jpeg " + os.urandom(3000),
    "b.png": b"\x89PNG\r\n\x1a\n" + os.urandom(2000),
    "c.mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000),
}
RAR_SAMPLES = Path(__file__).parent / "data" / "rar"


def _archive(tmp_path: Path, fmt: str, members: dict[str, bytes | str | None] | list, name: str = "in") -> Path:
    items = list(members.items()) if isinstance(members, dict) else members
    return write_archive(tmp_path / f"{name}.{fmt}", fmt, items)


def _assert_empty_and_contained(tmp_path: Path, dest: Path) -> None:
    """Nothing extracted into dest, nothing written next to it (outside dest)."""
    assert not dest.exists() or list(dest.iterdir()) == []
    outside = {p.name for p in tmp_path.iterdir()} - {dest.name} - {p.name for p in tmp_path.glob("in*.*")}
    assert outside == set(), f"written outside dest: {outside}"


@pytest.mark.parametrize("fmt", FORMATS + ("tar.bz2", "tar.xz"))
def test_expands_root_files(tmp_path: Path, fmt: str) -> None:
    if fmt in ("tar.bz2", "tar.xz"):
        archive = tmp_path / f"in.{fmt}"
        with tarfile.open(archive, f"w:{fmt[4:]}") as tf:
            for name, data in FILES.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        archive = _archive(tmp_path, fmt, FILES)
    assert is_archive(archive)
    out = expand_archive(archive, tmp_path / "out")
    assert [p.name for p in out] == list(FILES)
    for p in out:
        assert p.parent == tmp_path / "out"
        assert p.read_bytes() == FILES[p.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_leading_dot_slash_and_os_junk(tmp_path: Path, fmt: str) -> None:
    members = [("./a.jpg", FILES["a.jpg"]), ("./.DS_Store", b"junk"), ("./._a.jpg", b"junk"), ("Thumbs.db", b"j")]
    if fmt.startswith("tar"):
        members.insert(0, (".", None))  # like `tar -cf in.tar .` on a Mac
    else:
        members += [("__MACOSX", None), ("__MACOSX/._a.jpg", b"j")]
    assert [p.name for p in expand_archive(_archive(tmp_path, fmt, members), tmp_path / "out")] == ["a.jpg"]


def test_not_archives(tmp_path: Path) -> None:
    for name, data in [
        ("x.jpg", FILES["a.jpg"]),
        ("x.mp4", FILES["c.mp4"]),
        ("empty", b""),
        ("notes.txt", b"/set type=file\n. type=dir\n"),
    ]:  # an mtree manifest is not an archive
        (tmp_path / name).write_bytes(data)
        assert not is_archive(tmp_path / name)
    with pytest.raises(ArchiveError, match="not an archive"):
        expand_archive(tmp_path / "x.jpg", tmp_path / "out")


REFUSED = [
    ({"a.jpg": b"x", "inner.zip": "ZIP"}, "nested archives", "inner.zip"),
    ({"a.jpg": b"x", "inner.dat": "7Z"}, "nested archives", "inner.dat"),
    ({"a.jpg": b"x", "sub/b.jpg": b"y"}, "inside a folder", "sub/b.jpg"),
    ([("a.jpg", b"x"), ("photos", None)], "folders are not supported", "photos"),
    ({"../x.jpg": b"x"}, "unsafe member name", "../x.jpg"),
    ({"/etc/x.jpg": b"x"}, "unsafe member name", "x.jpg"),
    ({"C:x.jpg": b"x"}, "unsafe member name", "C:x.jpg"),
    ({"a.jpg": b"x", "./a.jpg": b"y"}, "duplicate", "a.jpg"),
    ({"a.jpg": b"x", "link.jpg": "/etc/passwd"}, "is a symlink", "link.jpg"),
    ({"a\x07.jpg": b"x"}, "control characters", "a\\x07.jpg"),
    ({"é" * 130 + ".jpg": b"x"}, "longer than 255 bytes", "éééé"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("members,problem,shown", REFUSED, ids=[r[1] + "-" + r[2][:8] for r in REFUSED])
def test_refused_members(tmp_path: Path, fmt: str, members, problem: str, shown: str) -> None:
    if fmt == "7z" and problem == "unsafe member name" and shown != "../x.jpg":
        pytest.skip("py7zr strips a leading / or drive letter when it writes")
    if isinstance(members, dict):
        inner = {
            "ZIP": _archive(tmp_path, "zip", {"z.jpg": b"z"}, "inner"),
            "7Z": _archive(tmp_path, "7z", {"z.jpg": b"z"}, "inner"),
        }
        members = {k: inner[v].read_bytes() if v in inner else v for k, v in members.items()}
    archive = _archive(tmp_path, fmt, members)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=problem) as err:
        expand_archive(archive, dest)
    assert shown in str(err.value)  # the message names the member
    with pytest.raises(ArchiveError, match=problem):
        list(iter_member_files(archive, work_dir=tmp_path))
    _assert_empty_and_contained(tmp_path, dest)


@pytest.mark.parametrize("fmt", ["zip", "7z"])
def test_backslash_names_never_reach_the_disk(tmp_path: Path, fmt: str) -> None:
    """libarchive may turn a zip's `dir\\x.jpg` into a folder path; either way it is refused."""
    with pytest.raises(ArchiveError, match="unsafe member name|inside a folder"):
        expand_archive(_archive(tmp_path, fmt, {"dir\\x.jpg": b"x"}), tmp_path / "out")
    _assert_empty_and_contained(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "kind,problem",
    [(tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "special file"), (tarfile.FIFOTYPE, "special file")],
)
def test_links_and_devices_in_tar_refused(tmp_path: Path, kind: bytes, problem: str) -> None:
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("evil.jpg")
        link.type = kind
        link.linkname = "a.jpg"
        tf.addfile(link)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=f"'evil.jpg': is a {problem}"):
        expand_archive(archive, dest)
    _assert_empty_and_contained(tmp_path, dest)


@pytest.mark.parametrize(
    "sample,problem",
    [
        ("rar5-symlink-unix.rar", "'data_link': is a symlink"),
        ("rar3-symlink-unix.rar", "'data_link': is a symlink"),
        ("rar5-subdirs.rar", "inside a folder"),
        ("rar5-hlink.rar", "'stest2.txt': is a hard link"),
        ("rar5-psw.rar", "encrypted|corrupt"),
        ("rar3-solid.rar", "corrupt or unsupported rar archive: RAR solid archive support unavailable"),
    ],
)
def test_real_rar_archives_refused(tmp_path: Path, sample: str, problem: str) -> None:
    """Archives WinRAR made (shipped in rarfile's sdist): links, folders, encryption, RAR 3 solid."""
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=problem):
        expand_archive(RAR_SAMPLES / sample, dest)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_real_rar5_solid_archive_expands(tmp_path: Path) -> None:
    out = expand_archive(RAR_SAMPLES / "rar5-solid.rar", tmp_path / "out")
    assert [(p.name, p.stat().st_size) for p in out] == [("stest1.txt", 2048), ("stest2.txt", 2048)]


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "7z"])
def test_bomb_refused_from_headers(tmp_path: Path, fmt: str) -> None:
    archive = _archive(tmp_path, fmt, {"a.jpg": b"x", "bomb.jpg": bytes(64 * 1024 * 1024)})
    assert archive.stat().st_size < 200_000
    with pytest.raises(ArchiveError, match="'bomb.jpg': archive expands more than 200 times.*decompression bomb"):
        expand_archive(archive, tmp_path / "out")
    _assert_empty_and_contained(tmp_path, tmp_path / "out")


def test_zip_whose_headers_understate_the_size(tmp_path: Path) -> None:
    """Headers claiming 1000 bytes for a 64 MiB member pass the header checks: stopped on the bytes produced."""
    archive = _archive(tmp_path, "zip", {"a.jpg": b"x", "bomb.jpg": bytes(64 * 1024 * 1024)})
    data = bytearray(archive.read_bytes())
    for header, size_at in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # central and local headers
        entry = data.rindex(header)
        data[entry + size_at : entry + size_at + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="'bomb.jpg'"):
        expand_archive(archive, dest)
    _assert_empty_and_contained(tmp_path, dest)


@pytest.mark.parametrize("fmt", FORMATS)
def test_total_size_and_member_count_limits(tmp_path: Path, fmt: str) -> None:
    archive = _archive(tmp_path, fmt, FILES)
    with pytest.raises(ArchiveError, match="more than the limit of 5000"):
        expand_archive(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=5000))
    with pytest.raises(ArchiveError, match="too many entries"):
        expand_archive(archive, tmp_path / "out", ArchiveLimits(max_members=2))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_archives(tmp_path: Path, fmt: str) -> None:
    good = _archive(tmp_path, fmt, FILES).read_bytes()
    (tmp_path / f"in-cut.{fmt}").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match="corrupt"):
        expand_archive(tmp_path / f"in-cut.{fmt}", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_gzip_of_something_else(tmp_path: Path) -> None:
    (tmp_path / "x.jpg.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(50))
    with pytest.raises(ArchiveError, match="expected a tar archive inside"):
        expand_archive(tmp_path / "x.jpg.gz", tmp_path / "out")


def test_existing_file_in_dest_is_never_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "secret").write_text("keep")
    (dest / "b.png").symlink_to(tmp_path / "secret")
    with pytest.raises(ArchiveError, match="already exists"):
        expand_archive(_archive(tmp_path, "zip", FILES), dest)
    assert (tmp_path / "secret").read_text() == "keep"
    assert sorted(p.name for p in dest.iterdir()) == ["b.png"]  # a.jpg removed again


def test_iter_member_files_one_at_a_time(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "7z", FILES)
    names = []
    for name, file in iter_member_files(archive, work_dir=tmp_path):
        assert file.read_bytes() == FILES[name]
        assert len(list(file.parent.iterdir())) == 1  # only the current member is on disk
        names.append(name)
    assert names == list(FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.7z"]
