"""Block-blob uploads and ranged downloads that survive a killed client (Azure Blob REST, SAS URLs).

Upload: the file is cut into fixed-size blocks (4 to 16 MiB, `block_size_for`), `concurrency` of them in
flight (Put Block, each with its Content-MD5 so the store verifies it), then committed with Put Block List.
A journal file records the upload and each block the store acknowledged; run again, the upload asks the
store which blocks it holds (Get Block List, uncommitted: Veil answers it to the upload URL itself, Azure
only to a SAS with read permission) and, where the store does not answer that, trusts the journal, then
sends only the rest. A store that answers 412 LeaseIdMissing holds the upload committed already (Veil
freezes a committed input).

Download: into a part file with Range requests, resumed where it stopped, its size checked against the
blob's before it is moved into place.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from ._http import Http, check
from .errors import ClientError, Unreachable

MIB = 1024 * 1024
MIN_BLOCK, MAX_BLOCK = 4 * MIB, 16 * MIB
CONCURRENCY = 4  # blocks in flight: 4 x 16 MiB hides a WAN's latency; more only adds CPU contention
Progress = Callable[[int], None]  # called with a number of bytes just transferred


def block_size_for(size: int) -> int:
    """Blocks of 4 to 16 MiB, a power of two, about 128 to a file: a big file in few requests (less CPU
    per byte on both ends), a small one still in several blocks to send in parallel."""
    block = MIN_BLOCK
    while block < MAX_BLOCK and block * 128 < size:
        block *= 2
    return block


def block_id(index: int) -> str:
    """Standard base64 of a fixed-width name (Azure wants every id of a blob the same length)."""
    return base64.b64encode(f"veil-block-{index:08d}".encode()).decode()


class Journal:
    """Append-only record of an upload: a JSON header line, then one line per acknowledged block index.
    A line cut short by a kill is ignored; a header that does not match the upload discards the record."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path, self.header = path, header
        self._lock = threading.Lock()

    def load(self) -> set[int] | None:
        """The block indices recorded; None when there is no record of this upload (a first try)."""
        try:
            lines = self.path.read_text().split("\n")[:-1]  # the last is empty, or a line the kill cut short
        except FileNotFoundError:
            return None
        if not lines or _json(lines[0]) != self.header:
            return None
        return {int(line) for line in lines[1:] if line.isdigit()}

    def start(self, keep: set[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{i}\n" for i in sorted(keep))
        self.path.write_text(json.dumps(self.header) + "\n" + body)

    def add(self, index: int) -> None:
        with self._lock, open(self.path, "a") as f:
            f.write(f"{index}\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _journal_block_size(journal_path: Path | None, session_uri: str, size: int) -> int | None:
    """The block size an earlier run of this upload recorded, if any."""
    try:
        header = _json(journal_path.read_text().split("\n", 1)[0]) if journal_path else None
    except FileNotFoundError:
        return None
    if header and header.get("session_uri") == session_uri and header.get("size") == size:
        return header.get("block_size") if isinstance(header.get("block_size"), int) else None
    return None


def session_uri_of(journal_path: Path) -> str | None:
    """The upload URL a journal was written for (to resume a job created by an earlier run)."""
    try:
        return _json(journal_path.read_text().split("\n", 1)[0]).get("session_uri")
    except (FileNotFoundError, AttributeError):
        return None


def wants_checksum(url: str) -> bool:
    """Whether blocks sent to `url` carry a Content-MD5: yes over plain HTTP across a network, where nothing else
    would notice a corrupted byte; no over HTTPS (TLS already checks every record, as the Azure SDK's default
    assumes) or to this machine (no wire to corrupt it), where the checksum would only cost CPU at both ends."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may be anywhere
        return True


def upload(
    http: Http,
    session_uri: str,
    path: Path,
    journal_path: Path | None = None,
    *,
    concurrency: int = CONCURRENCY,
    block_size: int | None = None,
    checksum: bool | None = None,
    progress: Progress | None = None,
    slots: threading.Semaphore | None = None,
) -> int:
    """Upload `path` to `session_uri` as a block blob; returns the bytes sent by this call. `block_size`
    None: `block_size_for` the file, or the one its journal records (a rerun resumes with the blocks it
    began with). `slots`, shared by concurrent uploads, bounds the blocks in flight across all of them.
    `checksum` None: `wants_checksum(session_uri)`."""
    if checksum is None:
        checksum = wants_checksum(session_uri)
    size = path.stat().st_size
    if block_size is None:
        block_size = _journal_block_size(journal_path, session_uri, size) or block_size_for(size)
    header = {"session_uri": session_uri, "size": size, "block_size": block_size}
    journal = Journal(journal_path, header) if journal_path else None
    count = -(-size // block_size)
    have = _blocks_held(http, session_uri, size, block_size, journal)
    if progress and have:
        progress(sum(min(block_size, size - i * block_size) for i in have))
    try:
        sent = _put_blocks(
            http,
            session_uri,
            path,
            sorted(set(range(count)) - have),
            journal,
            concurrency,
            block_size,
            checksum,
            progress,
            slots or threading.Semaphore(concurrency),
        )
    except _Committed:  # an earlier run committed it and was killed before it could say so
        if journal:
            journal.remove()
        return 0
    xml = (
        "<?xml version='1.0' encoding='utf-8'?><BlockList>"
        + "".join(f"<Latest>{block_id(i)}</Latest>" for i in range(count))
        + "</BlockList>"
    )
    response = http.request(
        "PUT", session_uri + "&comp=blocklist", data=xml.encode(), headers={"Content-Type": "application/xml"}
    )
    if response.status_code == 400 and response.headers.get("x-ms-error-code") == "InvalidBlockList" and have:
        if journal:  # the store no longer holds blocks the journal listed (expired): send everything
            journal.remove()
        return sent + upload(
            http,
            session_uri,
            path,
            journal_path,
            concurrency=concurrency,
            block_size=block_size,
            checksum=checksum,
            progress=progress,
            slots=slots,
        )
    if not (response.status_code in (409, 412) and _retried(response) or _frozen(response)):
        # 409/412 after a retry: the lost try committed the blob, which the store now keeps (Veil freezes an input)
        check(response, "Put Block List", ok=(201,))
    if journal:
        journal.remove()
    return sent


def _blocks_held(http: Http, session_uri: str, size: int, block_size: int, journal: Journal | None) -> set[int]:
    """Indices of the blocks already staged, when resuming (a journal of this upload exists): from Get Block
    List where the store answers it, else from the journal."""
    if journal is None:
        return set()
    recorded = journal.load()
    if recorded is None:  # a first try: the store holds nothing of this upload yet
        journal.start(set())
        return set()
    held = _get_block_list(http, session_uri)
    if held is None:
        have = recorded
    else:  # each block staged under its id with its full size (a block cut short by the kill was never staged)
        count = -(-size // block_size)
        have = {i for i in range(count) if held.get(block_id(i)) == min(block_size, size - i * block_size)}
    journal.start(have)
    return have


def _get_block_list(http: Http, session_uri: str) -> dict[str, int] | None:
    """Get Block List (uncommitted): {id: size} of the staged blocks; None where the store does not answer it
    (an Azure SAS without read permission: 403; a store without the operation: 400)."""
    try:
        response = http.request("GET", session_uri + "&comp=blocklist&blocklisttype=uncommitted")
    except Unreachable:
        return None
    if response.status_code == 404:
        return {}
    if response.status_code != 200:
        return None
    try:
        blocks = ET.fromstring(response.content).iter("Block")
        return {block.findtext("Name", ""): int(block.findtext("Size", "-1")) for block in blocks}
    except (ET.ParseError, ValueError):
        return None


def _put_blocks(
    http: Http,
    session_uri: str,
    path: Path,
    todo: list[int],
    journal: Journal | None,
    concurrency: int,
    block_size: int,
    checksum: bool,
    progress: Progress | None,
    slots: threading.Semaphore,
) -> int:
    fd = os.open(path, os.O_RDONLY)

    def put(index: int) -> int:
        with slots:
            data = os.pread(fd, block_size, index * block_size)
            headers = {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()} if checksum else {}
            url = f"{session_uri}&comp=block&blockid={quote(block_id(index), safe='')}"
            response = http.request("PUT", url, data=data, headers=headers)
            if _frozen(response):
                raise _Committed()
            check(response, f"Put Block {index}", ok=(201,))
        if journal:
            journal.add(index)
        if progress:
            progress(len(data))
        return len(data)

    pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="veil-block")
    try:
        futures = [pool.submit(put, index) for index in todo]
        return sum(future.result() for future in futures)
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, blocks not yet started are not sent
        os.close(fd)


def download(
    http: Http, url: str, dest: Path, part: Path, *, progress: Progress | None = None, attempts: int = 20
) -> int:
    """Download `url` to `dest` by way of `part` (resumed from its length with a Range request); returns
    the blob's size. `dest` appears only complete, with the size the server announced."""
    part.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = http.request("GET", url, headers=headers, stream=True)
        with response:
            if response.status_code == 416:  # nothing after `offset`: complete, or longer than the blob
                total = _total_size(response, offset)
                if total != offset:
                    part.unlink()
                    continue
            else:
                check(response, f"download {dest.name}", ok=(200, 206))
                if response.status_code == 200:
                    offset = 0
                total = _total_size(response, offset)
                if progress and offset:
                    progress(offset)
                try:
                    _append(response, part, offset, progress)
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout):
                    continue  # resume from what reached the disk
        if total is None or part.stat().st_size == total:
            size = part.stat().st_size
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            return size
    raise ClientError(f"download {dest.name}: incomplete after {attempts} attempts")


class _Committed(Exception):
    """The store refuses writes to the blob because it holds it committed (`_frozen`)."""


def _frozen(response: requests.Response) -> bool:
    """412 LeaseIdMissing: the blob is committed and leased by the service (Veil freezes a committed input)."""
    return response.status_code == 412 and response.headers.get("x-ms-error-code") == "LeaseIdMissing"


def _retried(response: requests.Response) -> bool:
    """Whether urllib3 sent this request more than once (an earlier try may have reached the server)."""
    retries = getattr(response.raw, "retries", None)
    return bool(retries is not None and retries.history)


def _append(response: requests.Response, part: Path, offset: int, progress: Progress | None) -> None:
    with open(part, "r+b" if offset else "wb") as f:
        f.seek(offset)
        f.truncate()
        for chunk in response.iter_content(chunk_size=MIB):
            f.write(chunk)
            if progress:
                progress(len(chunk))


def _total_size(response: requests.Response, offset: int) -> int | None:
    """The blob's size: from Content-Range (206, and 416's `bytes */N`), else Content-Length."""
    if response.status_code in (206, 416):
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _json(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
