"""`LocalBlobStore`: block blobs as files on local disk, served by `veil.api.blob`.

Layout under `root` (one directory per blob, named by the SHA-256 of the blob name so any Azure
blob name maps to one safe path):

    <root>/<container>/<sha256(name)>/meta.json      committed properties (name, size, ETag, MD5,
                                                     times, content headers, committed block list)
                                     /data-<etag>    the committed bytes meta.json points at
                                     /blocks/<hex id> staged (uncommitted) blocks (Put Block)
                                     /tmp-<uuid>     bodies being received
                                     /lease          present once the blob is frozen (`freeze`)

A commit (Put Blob, Put Block List, `write`) builds a new `data-<etag>` file, fsyncs it, then
replaces `meta.json` atomically, so readers see either the old blob or the new one, never a mix;
a reader holding the old data file open keeps reading the old bytes. Everything streams in
fixed-size chunks: memory use does not grow with blob size.

A frozen blob (an infinite lease held by the service) refuses every write; its `lease` file
outlives `delete`, so an upload URL still within its lifetime cannot re-create the blob, until
`cleanup` drops the leftover lease once that lifetime is over.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from veil.storage.base import DOWNLOAD_PERMISSION, UPLOAD_PERMISSION, BlobNotFoundError, attachment_disposition
from veil.storage.sas import sign_blob_sas

# URL layout of the embedded endpoint: <public_url>/blob/<account>/<container>/<blob>.
BLOB_PATH_PREFIX = "/blob"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK = 1024 * 1024
_CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_LOCK_STRIPES = 64
_LEASE = "lease"


class BlobExistsError(Exception):
    """`If-None-Match: *` and the blob exists (409 BlobAlreadyExists)."""


class ConditionNotMetError(Exception):
    """`If-Match` names another ETag (412 ConditionNotMet)."""


class InvalidBlockListError(ValueError):
    """A block list names a block that is not staged / not committed (400 InvalidBlockList)."""


class BlobTooLargeError(ValueError):
    """A block list would commit more than the allowed size (413 RequestBodyTooLarge)."""


class BlobLeasedError(Exception):
    """A write to a frozen blob (412 LeaseIdMissing)."""


@dataclass(frozen=True)
class BlobProperties:
    name: str
    size: int
    etag: str  # quoted, e.g. "0x18F2A...", as sent in the ETag header
    created: float  # epoch seconds
    modified: float
    content_md5: str | None  # base64 MD5 of the whole blob, when known
    headers: dict[str, str] = field(default_factory=dict)  # Content-Type, Content-Disposition, ...
    blocks: tuple[tuple[str, int], ...] = ()  # committed block list: (hex id, size)
    leased: bool = False  # frozen: an infinite lease held by the service

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)


class LocalBlobStore:
    """Block blobs on local disk; implements `BlobStore`.

    `account` and `key` (raw bytes of the account key) sign the SAS URLs that `veil.api.blob`
    verifies; `public_url` is the base URL clients reach the Veil server at (e.g.
    `http://127.0.0.1:8000`), blob URLs are `<public_url>/blob/<account>/<container>/<blob>`.
    """

    def __init__(self, root: Path, account: str, key: bytes, public_url: str) -> None:
        if not key:
            raise ValueError("the blob store account key must not be empty")
        self.root = Path(root)
        self.account = account
        self.key = key
        self.public_url = public_url.rstrip("/")
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._etag_lock = threading.Lock()
        self._last_etag = 0

    # --- BlobStore protocol ------------------------------------------------------------------

    def blob_url(self, container: str, name: str) -> str:
        _check_names(container, name)
        return f"{self.public_url}{BLOB_PATH_PREFIX}/{self.account}/{container}/{quote(name)}"

    def account_url(self) -> str:
        return f"{self.public_url}{BLOB_PATH_PREFIX}/{self.account}"

    def signed_upload_url(self, container: str, name: str, expires_in: timedelta) -> str:
        sas = self._sas(container, name, UPLOAD_PERMISSION, expires_in)
        return f"{self.blob_url(container, name)}?{sas}"

    def signed_download_url(self, container: str, name: str, expires_in: timedelta, filename: str | None = None) -> str:
        disposition = attachment_disposition(filename) if filename else None
        sas = self._sas(container, name, DOWNLOAD_PERMISSION, expires_in, content_disposition=disposition)
        return f"{self.blob_url(container, name)}?{sas}"

    def upload_sas_parts(self, container: str, name: str, expires_in: timedelta) -> dict[str, str]:
        sas = self._sas(container, name, UPLOAD_PERMISSION, expires_in)
        return {"account_url": self.account_url(), "container": container, "blob": name, "sas_token": sas}

    def exists(self, container: str, name: str) -> bool:
        try:
            self.properties(container, name)
        except BlobNotFoundError:
            return False
        return True

    def size(self, container: str, name: str) -> int:
        return self.properties(container, name).size

    def open_read(self, container: str, name: str) -> BinaryIO:
        return self.open_blob(container, name)[1]

    def write(self, container: str, name: str, src: BinaryIO | Path) -> int:
        temp = self.new_temp(container, name)
        try:
            digest = hashlib.md5()
            with open(temp, "wb") as out:
                source = open(src, "rb") if isinstance(src, (str, Path)) else src
                try:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                finally:
                    if source is not src:
                        source.close()
            props = self.commit_file(container, name, temp, content_md5=_b64(digest.digest()))
        finally:
            temp.unlink(missing_ok=True)
        return props.size

    def delete(self, container: str, name: str) -> bool:
        directory = self._blob_dir(container, name)
        with self._lock(container, name):
            existed = (directory / "meta.json").exists()
            if directory.exists():
                trash = self.root / ".trash"
                trash.mkdir(exist_ok=True)
                moved = trash / uuid.uuid4().hex
                os.replace(directory, moved)
                if (moved / _LEASE).exists():  # a frozen name stays frozen (module docstring)
                    directory.mkdir(exist_ok=True)
                    os.replace(moved / _LEASE, directory / _LEASE)
                shutil.rmtree(moved, ignore_errors=True)
        return existed

    def freeze(self, container: str, name: str) -> None:
        """Refuse every later write to the blob (Put Block, Put Block List, Put Blob: 412
        LeaseIdMissing), also after `delete`, as long as an upload URL for it may be valid."""
        directory = self._blob_dir(container, name)
        with self._lock(container, name):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / _LEASE).touch()

    def frozen(self, container: str, name: str) -> bool:
        return (self._blob_dir(container, name) / _LEASE).exists()

    def list(self, container: str, prefix: str = "") -> list[str]:
        _check_container(container)
        base = self.root / container
        if not base.is_dir():
            return []
        names = []
        for directory in base.iterdir():
            meta = _read_meta(directory)
            if meta is not None and meta["name"].startswith(prefix):
                names.append(meta["name"])
        return sorted(names)

    # --- what the HTTP endpoint needs --------------------------------------------------------

    def properties(self, container: str, name: str) -> BlobProperties:
        directory = self._blob_dir(container, name)
        meta = _read_meta(directory)
        if meta is None:
            raise BlobNotFoundError(container, name)
        return _props(meta, directory)

    def container_exists(self, container: str) -> bool:
        _check_container(container)
        return (self.root / container).is_dir()

    def open_blob(self, container: str, name: str) -> tuple[BlobProperties, BinaryIO]:
        """Properties and an open stream of the same committed version (a concurrent commit
        replaces meta.json and then removes the old data file; retry if we lost that race)."""
        directory = self._blob_dir(container, name)
        for _ in range(10):
            meta = _read_meta(directory)
            if meta is None:
                break
            try:
                return _props(meta, directory), open(directory / meta["data"], "rb")
            except FileNotFoundError:
                continue
        raise BlobNotFoundError(container, name)

    def new_temp(self, container: str, name: str) -> Path:
        """A fresh path in the blob's directory for receiving a body (same filesystem as the
        committed data, so commits are renames)."""
        directory = self._blob_dir(container, name)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"tmp-{uuid.uuid4().hex}"

    def staged_blocks(self, container: str, name: str) -> dict[bytes, int]:
        """Uncommitted blocks: decoded id -> size."""
        try:
            with os.scandir(self._blob_dir(container, name) / "blocks") as entries:
                return {bytes.fromhex(e.name): e.stat().st_size for e in entries}
        except FileNotFoundError:
            return {}

    def block_list(self, container: str, name: str) -> tuple[BlobProperties | None, list[tuple[bytes, int]]]:
        """Get Block List: the committed blob's properties (its `blocks` are the committed list) or None, and the
        uncommitted blocks as (decoded id, size) in the order they were staged; BlobNotFoundError when the blob
        has neither."""
        try:
            props = self.properties(container, name)
        except BlobNotFoundError:
            props = None
        try:
            with os.scandir(self._blob_dir(container, name) / "blocks") as entries:
                found = [(e.stat(), e.name) for e in entries]
        except FileNotFoundError:
            found = []
        if props is None and not found:
            raise BlobNotFoundError(container, name)
        found.sort(key=lambda item: (item[0].st_mtime_ns, item[1]))
        return props, [(bytes.fromhex(hex_id), stat.st_size) for stat, hex_id in found]

    def stage_block(self, container: str, name: str, block_id: bytes, temp: Path) -> None:
        """Put Block: `temp` (from `new_temp`) becomes the uncommitted block `block_id`, replacing
        a block staged earlier under the same id."""
        if self.frozen(container, name):
            raise BlobLeasedError(f"{container}/{name}")
        blocks = self._blob_dir(container, name) / "blocks"
        blocks.mkdir(parents=True, exist_ok=True)
        os.replace(temp, blocks / block_id.hex())

    def commit_file(
        self,
        container: str,
        name: str,
        temp: Path,
        *,
        content_md5: str | None = None,
        headers: dict[str, str] | None = None,
        if_none_match_any: bool = False,
        if_match: str | None = None,
    ) -> BlobProperties:
        """Put Blob: `temp` (from `new_temp`) becomes the committed blob; uncommitted blocks are
        discarded."""
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        size = temp.stat().st_size
        with self._lock(container, name):
            self._check_conditions(container, name, if_none_match_any, if_match)
            etag = self._new_etag()
            directory = self._blob_dir(container, name)
            os.replace(temp, directory / f"data-{etag}")
            return self._publish(container, name, etag, size, content_md5, headers or {}, [])

    def commit_block_list(
        self,
        container: str,
        name: str,
        blocks: Iterable[tuple[str, bytes]],
        *,
        content_md5: str | None = None,
        headers: dict[str, str] | None = None,
        if_none_match_any: bool = False,
        if_match: str | None = None,
        max_size: int | None = None,
    ) -> BlobProperties:
        """Put Block List: `blocks` are (kind, decoded id) with kind "Latest" (the staged block,
        else the committed one), "Committed" or "Uncommitted" (notes §1.2). Builds the new data
        from staged block files and ranges of the current blob, then publishes atomically."""
        directory = self._blob_dir(container, name)
        with self._lock(container, name):
            self._check_conditions(container, name, if_none_match_any, if_match)
            staged = self.staged_blocks(container, name)
            current = _read_meta(directory)
            committed: dict[bytes, tuple[int, int]] = {}  # id -> (offset, size) in current data
            offset = 0
            for hex_id, block_size in current["blocks"] if current else []:
                committed.setdefault(bytes.fromhex(hex_id), (offset, block_size))
                offset += block_size

            plan: list[tuple[Path, int, int]] = []  # (source file, offset, length)
            new_blocks: list[list] = []
            for kind, block_id in blocks:
                use_staged = kind in ("Latest", "Uncommitted") and block_id in staged
                if use_staged:
                    size = staged[block_id]
                    plan.append((directory / "blocks" / block_id.hex(), 0, size))
                elif kind in ("Latest", "Committed") and block_id in committed and current:
                    start, size = committed[block_id]
                    plan.append((directory / current["data"], start, size))
                else:
                    raise InvalidBlockListError(f"{kind} block {_b64(block_id)} is not found")
                new_blocks.append([block_id.hex(), size])
            total = sum(length for _, _, length in plan)
            if max_size is not None and total > max_size:
                raise BlobTooLargeError(f"the block list adds up to {total} bytes, over the {max_size} limit")

            etag = self._new_etag()
            directory.mkdir(parents=True, exist_ok=True)
            temp = directory / f"tmp-{uuid.uuid4().hex}"
            try:
                with open(temp, "wb") as out:
                    for source, start, length in plan:
                        with open(source, "rb") as src:
                            _copy_range(src, out, start, length)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, directory / f"data-{etag}")
            finally:
                temp.unlink(missing_ok=True)
            props = self._publish(container, name, etag, total, content_md5, headers or {}, new_blocks)
        return props

    def cleanup(self, older_than: timedelta) -> int:
        """Remove uncommitted blocks, unfinished bodies and unreferenced data files last touched
        more than `older_than` ago, and blob directories left empty. Returns files removed."""
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        for container in self.root.iterdir():
            if not container.is_dir():
                continue
            if container.name == ".trash":
                shutil.rmtree(container, ignore_errors=True)
                continue
            for directory in container.iterdir():
                try:
                    removed += self._cleanup_blob_dir(directory, cutoff)
                except FileNotFoundError:
                    continue  # deleted meanwhile
        return removed

    # --- internals ---------------------------------------------------------------------------

    def _sas(self, container: str, name: str, permission: str, expires_in: timedelta, **overrides) -> str:
        _check_names(container, name)
        expiry = datetime.now(UTC) + expires_in
        return sign_blob_sas(
            account=self.account,
            key=self.key,
            container=container,
            blob=name,
            permission=permission,
            expiry=expiry,
            **overrides,
        )

    def _blob_dir(self, container: str, name: str) -> Path:
        _check_names(container, name)
        return self.root / container / hashlib.sha256(name.encode("utf-8")).hexdigest()

    def _lock(self, container: str, name: str) -> threading.Lock:
        digest = hashlib.sha256(f"{container}/{name}".encode()).digest()
        return self._locks[digest[0] % _LOCK_STRIPES]

    def _new_etag(self) -> str:
        with self._etag_lock:
            self._last_etag = max(time.time_ns(), self._last_etag + 1)
            return f"0x{self._last_etag:X}"

    def _check_conditions(self, container: str, name: str, if_none_match_any: bool, if_match: str | None) -> None:
        if self.frozen(container, name):
            raise BlobLeasedError(f"{container}/{name}")
        meta = _read_meta(self._blob_dir(container, name))
        if if_none_match_any and meta is not None:
            raise BlobExistsError(f"{container}/{name}")
        if if_match:
            tag = if_match.strip()
            if meta is None or (tag != "*" and tag.strip('"') != meta["etag"]):
                raise ConditionNotMetError(f"{container}/{name}")

    def _publish(
        self,
        container: str,
        name: str,
        etag: str,
        size: int,
        content_md5: str | None,
        headers: dict[str, str],
        blocks: list[list],
    ) -> BlobProperties:
        """Point meta.json at data-<etag> (atomic replace), then drop the old data file and the
        uncommitted blocks. Caller holds the blob's lock."""
        directory = self._blob_dir(container, name)
        old = _read_meta(directory)
        now = time.time()
        meta = {
            "name": name,
            "size": size,
            "etag": etag,
            "data": f"data-{etag}",
            "created": old["created"] if old else now,
            "modified": now,
            "md5": content_md5,
            "headers": {"Content-Type": DEFAULT_CONTENT_TYPE, **headers},
            "blocks": blocks,
        }
        temp = directory / f"tmp-{uuid.uuid4().hex}.json"
        temp.write_text(json.dumps(meta))
        os.replace(temp, directory / "meta.json")
        if old and old["data"] != meta["data"]:
            (directory / old["data"]).unlink(missing_ok=True)
        shutil.rmtree(directory / "blocks", ignore_errors=True)
        return _props(meta)

    def _cleanup_blob_dir(self, directory: Path, cutoff: float) -> int:
        # Directory mtimes are taken before we delete anything: an empty directory is removed only
        # if nothing was added to it since the cutoff (a concurrent upload may be starting there).
        idle = directory.stat().st_mtime < cutoff
        removed = 0
        meta = _read_meta(directory)
        blocks = directory / "blocks"
        if blocks.is_dir():
            blocks_idle = blocks.stat().st_mtime < cutoff
            for block in blocks.iterdir():
                if block.stat().st_mtime < cutoff:
                    block.unlink(missing_ok=True)
                    removed += 1
            if blocks_idle:
                _remove_if_empty(blocks)
        for entry in directory.iterdir():
            stale = (
                entry.name.startswith("tmp-")
                or (entry.name.startswith("data-") and (meta is None or entry.name != meta["data"]))
                or (entry.name == _LEASE and meta is None)
            )  # a deleted blob's lease: its upload URLs have expired
            if stale and entry.stat().st_mtime < cutoff:
                entry.unlink(missing_ok=True)
                removed += 1
        if idle:
            _remove_if_empty(directory)
        return removed


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (or gone): leave it
        pass


def _check_container(container: str) -> None:
    if not _CONTAINER_RE.match(container) or "--" in container:
        raise ValueError(f"invalid container name {container!r}: 3-63 lowercase letters, digits and single hyphens")


def _check_names(container: str, name: str) -> None:
    _check_container(container)
    if not name or len(name) > 1024 or "\x00" in name:
        raise ValueError(f"invalid blob name {name!r}: 1-1024 characters")


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except FileNotFoundError:
        return None


def _props(meta: dict, directory: Path | None = None) -> BlobProperties:
    return BlobProperties(
        name=meta["name"],
        size=meta["size"],
        etag=f'"{meta["etag"]}"',
        created=meta["created"],
        modified=meta["modified"],
        content_md5=meta.get("md5"),
        headers=dict(meta.get("headers", {})),
        blocks=tuple((h, s) for h, s in meta.get("blocks", [])),
        leased=directory is not None and (directory / _LEASE).exists(),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    """Append `length` bytes of `src` from `offset` to `dst`, in the kernel where possible."""
    dst.flush()
    src_fd, dst_fd = src.fileno(), dst.fileno()
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(src_fd, dst_fd, min(length - copied, 1 << 30), offset + copied)
            if n == 0:
                raise OSError(f"unexpected end of {src.name}")
            copied += n
        return
    except (AttributeError, OSError) as exc:
        if copied or not _copy_unsupported(exc):
            raise
    src.seek(offset)
    while copied < length:
        chunk = src.read(min(CHUNK, length - copied))
        if not chunk:
            raise OSError(f"unexpected end of {src.name}")
        dst.write(chunk)
        copied += len(chunk)


def _copy_unsupported(exc: Exception) -> bool:
    return isinstance(exc, AttributeError) or getattr(exc, "errno", None) in (
        errno.EXDEV,
        errno.ENOSYS,
        errno.EINVAL,
        errno.EOPNOTSUPP,
        errno.EBADF,
    )
