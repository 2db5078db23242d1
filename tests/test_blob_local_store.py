"""`LocalBlobStore` internals the contract suite cannot see: atomic commits, metadata, cleanup."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from veil.storage.local import InvalidBlockListError, LocalBlobStore


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", "acct", b"k" * 32, "http://127.0.0.1:9")


def _stage(store: LocalBlobStore, name: str, block_id: bytes, data: bytes) -> None:
    temp = store.new_temp("uploads", name)
    temp.write_bytes(data)
    store.stage_block("uploads", name, block_id, temp)


def test_metadata_after_write(store: LocalBlobStore) -> None:
    store.write("outputs", "a.bin", io.BytesIO(b"abc"))
    props = store.properties("outputs", "a.bin")
    assert props.size == 3
    assert props.content_md5 == base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    assert props.etag.startswith('"0x') and props.content_type == "application/octet-stream"
    store.write("outputs", "a.bin", io.BytesIO(b"abcd"))
    newer = store.properties("outputs", "a.bin")
    assert newer.etag != props.etag and newer.created == props.created and newer.size == 4


def test_reader_keeps_its_version_across_a_commit(store: LocalBlobStore) -> None:
    store.write("uploads", "v.bin", io.BytesIO(b"old" * 1000))
    props, stream = store.open_blob("uploads", "v.bin")
    _stage(store, "v.bin", b"\x01", b"new")
    assert store.open_read("uploads", "v.bin").read() == b"old" * 1000  # staged, not committed
    store.commit_block_list("uploads", "v.bin", [("Latest", b"\x01")])
    with stream:
        assert stream.read() == b"old" * 1000 and props.size == 3000
    assert store.open_read("uploads", "v.bin").read() == b"new"
    directory = next((store.root / "uploads").iterdir())
    assert sorted(p.name for p in directory.iterdir())[-1] == "meta.json"
    assert len([p for p in directory.iterdir() if p.name.startswith("data-")]) == 1  # old data removed


def test_failed_block_list_leaves_blob_and_blocks_untouched(store: LocalBlobStore) -> None:
    store.write("uploads", "f.bin", io.BytesIO(b"keep"))
    _stage(store, "f.bin", b"\x01", b"staged")
    with pytest.raises(InvalidBlockListError):
        store.commit_block_list("uploads", "f.bin", [("Latest", b"\x01"), ("Committed", b"\x09")])
    assert store.open_read("uploads", "f.bin").read() == b"keep"
    assert store.staged_blocks("uploads", "f.bin") == {b"\x01": 6}


def test_cleanup_removes_stale_uncommitted_blocks(store: LocalBlobStore) -> None:
    _stage(store, "abandoned.bin", b"\x00", os.urandom(100))
    _stage(store, "fresh.bin", b"\x00", b"x")
    store.write("uploads", "done.bin", io.BytesIO(b"done"))
    leftover = store.new_temp("uploads", "done.bin")
    leftover.write_bytes(b"half a body")
    old = time.time() - 7200
    fresh_dir = store.new_temp("uploads", "fresh.bin").parent
    for path in (store.root / "uploads").rglob("*"):  # everything but the fresh upload is 2 h old
        if fresh_dir not in (path, *path.parents):
            os.utime(path, (old, old))
    removed = store.cleanup(older_than=timedelta(hours=1))
    assert removed == 2  # the abandoned block and the half-received body
    assert store.staged_blocks("uploads", "abandoned.bin") == {}
    assert store.staged_blocks("uploads", "fresh.bin") == {b"\x00": 1}
    assert store.open_read("uploads", "done.bin").read() == b"done"  # committed data is never touched
    assert not leftover.exists()
    assert len(list((store.root / "uploads").iterdir())) == 2  # the abandoned blob's directory is gone


def test_names_are_validated(store: LocalBlobStore) -> None:
    with pytest.raises(ValueError, match="invalid container name"):
        store.write("../etc", "x", io.BytesIO(b""))
    with pytest.raises(ValueError, match="invalid blob name"):
        store.write("uploads", "", io.BytesIO(b""))
    # Any blob name (slashes, dots) maps inside the container directory.
    store.write("uploads", "../../escape/../x", io.BytesIO(b"safe"))
    assert [p.parent.parent for p in store.root.rglob("meta.json")] == [store.root / "uploads"]
    assert store.list("uploads") == ["../../escape/../x"]
