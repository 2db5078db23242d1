"""The embedded Azure Blob endpoint (`veil.api.blob`) over a real uvicorn server on loopback, driven
by the seed's own client code (requests) and raw sockets. Facts checked are those of
`notes/azure-blob-protocol.md` (§1 operations, §1.6 errors, §2 SAS)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from fastapi import FastAPI

from veil.api.blob import UploadLimits, create_blob_router
from veil.storage.local import LocalBlobStore
from veil.storage.testing import free_port, serve_app

MAX_UPLOAD = 32 * 1024 * 1024
HOUR = timedelta(hours=1)


class Server:
    def __init__(self, store: LocalBlobStore, events: list) -> None:
        self.store = store
        self.events = events

    def upload_url(self, name: str | None = None, container: str = "uploads") -> tuple[str, str]:
        name = name or f"{uuid.uuid4()}.bin"
        return name, self.store.signed_upload_url(container, name, HOUR)

    def download_url(self, name: str, container: str = "uploads", **kwargs) -> str:
        return self.store.signed_download_url(container, name, HOUR, **kwargs)

    def put_blob(self, data: bytes, **headers: str) -> tuple[str, requests.Response]:
        name, url = self.upload_url()
        response = requests.put(url, data=data, headers={"x-ms-blob-type": "BlockBlob", **headers})
        assert response.status_code == 201, response.text
        return name, response


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    store = LocalBlobStore(tmp_path_factory.mktemp("blobs"), "veiltest", os.urandom(32), f"http://127.0.0.1:{port}")
    events: list[tuple[str, str, int]] = []
    app = FastAPI()
    app.include_router(
        create_blob_router(store, lambda c, b, s: events.append((c, b, s)), UploadLimits(max_bytes=MAX_UPLOAD))
    )
    with serve_app(app, port):
        yield Server(store, events)


def vendor_upload_file(session_uri: str, file_name: str, chunk_size: int = 4 * 1024 * 1024) -> list[str]:
    """The seed's `upload_file`, verbatim except that the chunk size is a parameter."""
    block_ids = []
    with open(file_name, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            block_id = base64.urlsafe_b64encode(len(block_ids).to_bytes(4, byteorder="big")).decode("utf-8")
            if not chunk:
                break
            response = requests.put(session_uri + "&comp=block" + "&blockid=" + block_id, data=chunk)
            if response.status_code != 201:
                raise Exception(f"Failed to upload file: {response.text}")
            else:
                block_ids.append(block_id)
    xml = "<BlockList>"
    for block_id in block_ids:
        xml += f"<Latest>{block_id}</Latest>"
    xml += "</BlockList>"
    response = requests.put(session_uri + "&comp=blocklist", data=xml)
    if response.status_code != 201:
        raise Exception(f"Failed to upload file: {response.text}")
    return block_ids


def vendor_download(url: str, dest: Path) -> None:
    """The seed's `download_tasks` body for one task."""
    with requests.get(url, stream=True) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in r.iter_content(chunk_size=1024 * 1024):
                f.write(chunk)


def error_code(response: requests.Response) -> str:
    """The Azure error code, checked to be in both the header and the XML body (§1.6)."""
    assert response.headers["Content-Type"].startswith("application/xml")
    code = ET.fromstring(response.content).findtext("Code")
    assert code == response.headers["x-ms-error-code"]
    return code


def test_vendor_client_4mib_blocks_round_trip(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(9 * 1024 * 1024 + 12345)  # three 4 MiB blocks, the last one short
    src.write_bytes(data)
    name, url = server.upload_url()
    ids = vendor_upload_file(url, str(src))
    assert len(ids) == 3
    assert ("uploads", name, len(data)) in server.events  # the embedded BlobCreated event
    dest = tmp_path / "out.bin"
    vendor_download(server.download_url(name), dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_vendor_urlsafe_block_ids_248_to_250(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(251 * 16 - 3)
    src.write_bytes(data)
    name, url = server.upload_url()
    ids = vendor_upload_file(url, str(src), chunk_size=16)
    assert ids[248:251] == ["AAAA-A==", "AAAA-Q==", "AAAA-g=="]  # the ids Azure itself rejects (§1.1)
    assert server.store.open_read("uploads", name).read() == data


def test_standard_alphabet_and_percent_encoded_ids(server: Server) -> None:
    name, url = server.upload_url()
    ids = [base64.b64encode(bytes([0, 0, 0, 0xF8 + i])).decode() for i in range(2)]  # "AAAA+A==", "AAAA+Q=="
    for block_id, chunk in zip(ids, (b"one-", b"two")):
        encoded = block_id.replace("+", "%2B").replace("=", "%3D")
        assert requests.put(f"{url}&comp=block&blockid={encoded}", data=chunk).status_code == 201
    # A raw "+" arrives as a space (pitfall 11) and must still name the same block.
    xml = f"<BlockList><Latest>{ids[0]}</Latest><Latest>{ids[1]}</Latest></BlockList>"
    assert requests.put(url + "&comp=blocklist", data=xml).status_code == 201
    raw_name, raw_url = server.upload_url()
    assert requests.put(f"{raw_url}&comp=block&blockid={ids[0]}", data=b"raw").status_code == 201
    assert (
        requests.put(raw_url + "&comp=blocklist", data=f"<BlockList><Latest>{ids[0]}</Latest></BlockList>").status_code
        == 201
    )
    assert server.store.open_read("uploads", name).read() == b"one-two"
    assert server.store.open_read("uploads", raw_name).read() == b"raw"


def test_sdk_style_block_list_with_declaration_and_content_settings(server: Server) -> None:
    name, url = server.upload_url()
    block_id = base64.b64encode(b"%048d" % 7).decode()
    assert requests.put(f"{url}&comp=block&blockid={block_id}", data=b"hello").status_code == 201
    xml = f"<?xml version='1.0' encoding='utf-8'?>\n<BlockList><Latest>{block_id}</Latest></BlockList>"
    response = requests.put(
        url + "&comp=blocklist",
        data=xml,
        headers={
            "Content-Type": "application/xml",
            "x-ms-blob-content-type": "text/plain",
            "x-ms-blob-content-disposition": 'attachment; filename="h.txt"',
            "If-None-Match": "*",
        },
    )
    assert response.status_code == 201 and response.headers["ETag"].startswith('"0x')
    got = requests.get(server.download_url(name))
    assert got.content == b"hello"
    assert got.headers["Content-Type"] == "text/plain"
    assert got.headers["Content-Disposition"] == 'attachment; filename="h.txt"'
    # If-None-Match: * on an existing blob → 409 BlobAlreadyExists (§1.2)
    again = requests.put(url + "&comp=blocklist", data=xml, headers={"If-None-Match": "*"})
    assert again.status_code == 409 and error_code(again) == "BlobAlreadyExists"


def test_block_list_latest_committed_uncommitted(server: Server) -> None:
    name, url = server.upload_url()

    def stage(block: str, data: bytes) -> None:
        assert requests.put(f"{url}&comp=block&blockid={block}", data=data).status_code == 201

    def commit(*items: tuple[str, str]) -> requests.Response:
        body = "<BlockList>" + "".join(f"<{k}>{b}</{k}>" for k, b in items) + "</BlockList>"
        return requests.put(url + "&comp=blocklist", data=body)

    a, b, c = (base64.b64encode(x).decode() for x in (b"a1", b"b1", b"c1"))
    stage(a, b"AAA"), stage(b, b"BBB")
    assert commit(("Latest", a), ("Latest", b)).status_code == 201
    stage(c, b"CCC")
    stage(b, b"bbb")  # a new version of b, staged
    assert server.store.open_read("uploads", name).read() == b"AAABBB"  # old content until the commit
    response = commit(("Committed", a), ("Uncommitted", c), ("Committed", b), ("Latest", b), ("Committed", a))
    assert response.status_code == 201, response.text
    assert server.store.open_read("uploads", name).read() == b"AAACCCBBBbbbAAA"
    # The commit cleared the uncommitted blocks: c is now only committed.
    bad = commit(("Uncommitted", c))
    assert bad.status_code == 400 and error_code(bad) == "InvalidBlockList"
    assert commit(("Committed", c), ("Latest", a)).status_code == 201
    assert server.store.open_read("uploads", name).read() == b"CCCAAA"
    # Unknown id → 400 InvalidBlockList; empty list → a 0-byte blob.
    missing = commit(("Latest", base64.b64encode(b"zz").decode()))
    assert missing.status_code == 400 and error_code(missing) == "InvalidBlockList"
    assert commit().status_code == 201
    assert server.store.size("uploads", name) == 0


def test_put_blob_and_full_get(server: Server) -> None:
    data = os.urandom(5000)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    name, response = server.put_blob(data, **{"Content-Type": "text/csv", "Content-MD5": md5})
    assert response.headers["Content-MD5"] == md5
    assert server.events[-1] == ("uploads", name, 5000)
    got = requests.get(server.download_url(name))
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-MD5"] == md5 and got.headers["Content-Type"] == "text/csv"
    assert got.headers["Content-Length"] == "5000"
    _, url = server.upload_url(name)
    exists = requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"})
    assert exists.status_code == 409 and error_code(exists) == "BlobAlreadyExists"
    assert requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201  # overwrite


def test_put_blob_requires_blob_type(server: Server) -> None:
    _, url = server.upload_url()
    response = requests.put(url, data=b"abc")
    assert response.status_code == 400 and error_code(response) == "MissingRequiredHeader"
    assert ET.fromstring(response.content).findtext("HeaderName") == "x-ms-blob-type"
    page = requests.put(url, data=b"abc", headers={"x-ms-blob-type": "PageBlob"})
    assert page.status_code == 400 and error_code(page) == "InvalidHeaderValue"


def test_ranged_get_with_both_headers(server: Server) -> None:
    data = bytes(range(256)) * 4
    name, _ = server.put_blob(data)
    url = server.download_url(name)
    r = requests.get(url, headers={"Range": "bytes=5-9"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data[5:10], "bytes 5-9/1024")
    assert r.headers["x-ms-blob-content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    # The SDK's first request asks for 32 MiB: clamp to the size (§1.4).
    r = requests.get(url, headers={"x-ms-range": "bytes=0-33554431"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data, "bytes 0-1023/1024")
    r = requests.get(url, headers={"x-ms-range": "bytes=1000-", "Range": "bytes=0-1"})  # x-ms-range wins
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data[1000:], "bytes 1000-1023/1024")
    r = requests.get(url, headers={"Range": "bytes=-4"})  # suffix range
    assert (r.status_code, r.content) == (206, data[-4:])
    r = requests.get(url, headers={"x-ms-range": "bytes=10-19", "x-ms-range-get-content-md5": "true"})
    assert r.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data[10:20]).digest()).decode()
    bad = requests.get(url, headers={"x-ms-range": "items=1-2"})
    assert bad.status_code == 400 and error_code(bad) == "InvalidHeaderValue"
    assert requests.get(url, headers={"Range": "bytes=oops"}).content == data  # malformed Range is ignored


def test_416_rules(server: Server) -> None:
    name, _ = server.put_blob(b"0123456789")
    url = server.download_url(name)
    for headers in ({"Range": "bytes=10-20"}, {"x-ms-range": "bytes=10-"}, {"Range": "bytes=-0"}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 416 and error_code(r) == "InvalidRange"
        assert r.headers["Content-Range"] == "bytes */10"
    # Empty blob: the SDK's ranged first GET gets 416, then the unranged retry gets 200 + empty body.
    empty, _ = server.put_blob(b"")
    empty_url = server.download_url(empty)
    r = requests.get(empty_url, headers={"x-ms-range": "bytes=0-33554431"})
    assert r.status_code == 416 and error_code(r) == "InvalidRange"
    r = requests.get(empty_url)
    assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"", "0")


def test_head(server: Server) -> None:
    name, _ = server.put_blob(b"x" * 321, **{"Content-Type": "image/png"})
    r = requests.head(server.download_url(name))
    assert r.status_code == 200 and r.headers["Content-Length"] == "321"
    assert r.headers["Content-Type"] == "image/png" and r.headers["x-ms-blob-type"] == "BlockBlob"
    missing = requests.head(server.download_url("nope.bin"))
    assert missing.status_code == 404 and missing.headers["x-ms-error-code"] == "BlobNotFound"
    assert missing.content == b""
    no_container = requests.get(server.download_url("x.bin", container="nothere"))
    assert no_container.status_code == 404 and error_code(no_container) == "ContainerNotFound"
    gone = requests.get(server.download_url("nope.bin"))
    assert gone.status_code == 404 and error_code(gone) == "BlobNotFound"


def test_conditional_get(server: Server) -> None:
    name, put = server.put_blob(b"abc")
    url = server.download_url(name)
    assert requests.get(url, headers={"If-Match": put.headers["ETag"]}).content == b"abc"
    r = requests.get(url, headers={"If-Match": '"0x1"'})
    assert r.status_code == 412 and error_code(r) == "ConditionNotMet"


def test_block_errors(server: Server) -> None:
    _, url = server.upload_url()

    def put_block(block_id: str | None, data: bytes = b"x", **headers: str) -> requests.Response:
        suffix = "&comp=block" + (f"&blockid={block_id}" if block_id is not None else "")
        return requests.put(url + suffix, data=data, headers=headers)

    r = put_block(None)
    assert r.status_code == 400 and error_code(r) == "MissingRequiredQueryParameter"
    r = put_block("!!not-base64")
    assert r.status_code == 400 and error_code(r) == "InvalidQueryParameterValue"
    assert ET.fromstring(r.content).findtext("QueryParameterName") == "blockid"
    r = put_block(base64.b64encode(b"x" * 65).decode())
    assert r.status_code == 400 and error_code(r) == "OutOfRangeInput"
    assert put_block("AAAAAA==").status_code == 201
    r = put_block("AAAAAAAA")  # 6 bytes where 4-byte ids are staged: all ids must have one length
    assert r.status_code == 400 and error_code(r) == "InvalidBlobOrBlock"
    bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = put_block("AAAAAQ==", b"data", **{"Content-MD5": bad_md5})
    assert r.status_code == 400 and error_code(r) == "Md5Mismatch"
    good_md5 = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    r = put_block("AAAAAQ==", b"data", **{"Content-MD5": good_md5})
    assert r.status_code == 201 and r.headers["Content-MD5"] == good_md5
    r = requests.put(url + "&comp=blocklist", data="<BlockList><Latest>AAAAAA==</Latest>")
    assert r.status_code == 400 and error_code(r) == "InvalidXmlDocument"
    r = requests.put(url + "&comp=appendblock", data=b"x")
    assert r.status_code == 400 and error_code(r) == "UnsupportedQueryParameter"


def test_sas_failures_are_403_with_azure_codes(server: Server) -> None:
    name, _ = server.put_blob(b"secret")
    expired = server.store.signed_download_url("uploads", name, timedelta(seconds=-1))
    r = requests.get(expired)
    assert r.status_code == 403 and error_code(r) == "AuthenticationFailed"
    assert "time frame" in ET.fromstring(r.content).findtext("AuthenticationErrorDetail")

    url = server.download_url(name)
    sig = url.split("sig=")[1]
    flipped = ("B" if sig[0] != "B" else "C") + sig[1:]
    for tampered in (
        url.replace(sig, flipped),
        url.replace("sp=r", "sp=rw"),
        url.replace(name, "other.bin"),
        url.split("?")[0],
        url.replace("/veiltest/", "/otheracct/"),
    ):
        r = requests.get(tampered)
        assert r.status_code == 403 and error_code(r) == "AuthenticationFailed", tampered
    # A valid download SAS cannot write; a valid upload SAS cannot read.
    r = requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 403 and error_code(r) == "AuthorizationPermissionMismatch"
    _, upload = server.upload_url(name)
    r = requests.get(upload)
    assert r.status_code == 403 and error_code(r) == "AuthorizationPermissionMismatch"
    expired_upload = server.store.signed_upload_url("uploads", "late.bin", timedelta(seconds=-1))
    r = requests.put(expired_upload + "&comp=block&blockid=AAAAAA==", data=b"x")
    assert r.status_code == 403 and error_code(r) == "AuthenticationFailed"
    assert not server.store.exists("uploads", "late.bin")


def test_download_filename_override(server: Server) -> None:
    name, _ = server.put_blob(b"jpeg bytes")
    r = requests.get(server.download_url(name, filename="photo_blurred.jpg"))
    assert r.headers["Content-Disposition"] == 'attachment; filename="photo_blurred.jpg"'
    r = requests.get(server.download_url(name, filename='café "1".jpg'))  # quotes dropped, RFC 6266 filename*
    assert r.headers["Content-Disposition"] == "attachment; filename=\"caf_ 1.jpg\"; filename*=UTF-8''caf%C3%A9%201.jpg"


def _raw_put(server: Server, url: str, headers: str, body: bytes = b"") -> bytes:
    """Send a PUT by hand and read the answer until the server closes: returns raw bytes. A server
    that waited for the announced body would leave this recv blocked until the socket timeout."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_413_decided_from_content_length_before_reading(server: Server) -> None:
    _, url = server.upload_url()
    too_big = MAX_UPLOAD + 1
    answer = _raw_put(server, url, f"Content-Length: {too_big}\r\nx-ms-blob-type: BlockBlob", b"only a few bytes")
    assert answer.startswith(b"HTTP/1.1 413") and b"x-ms-error-code: RequestBodyTooLarge" in answer
    answer = _raw_put(server, url + "&comp=block&blockid=AAAAAA==", f"Content-Length: {too_big}")
    assert answer.startswith(b"HTTP/1.1 413")
    # Staged blocks count against the limit too.
    half = MAX_UPLOAD // 2 + 1
    assert requests.put(url + "&comp=block&blockid=AAAAAA==", data=b"\0" * half).status_code == 201
    answer = _raw_put(server, url + "&comp=block&blockid=AAAAAQ==", f"Content-Length: {half}")
    assert answer.startswith(b"HTTP/1.1 413")
    # The server still serves normally afterwards.
    assert requests.put(url + "&comp=block&blockid=AAAAAA==", data=b"ok").status_code == 201


def test_411_without_content_length(server: Server) -> None:
    _, url = server.upload_url()
    answer = _raw_put(server, url, "Transfer-Encoding: chunked\r\nx-ms-blob-type: BlockBlob", b"3\r\nabc\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"x-ms-error-code: MissingContentLengthHeader" in answer
    r = requests.put(url + "&comp=block&blockid=AAAAAA==", data=iter([b"chunked", b"body"]))
    assert r.status_code == 411 and error_code(r) == "MissingContentLengthHeader"


def _block_list(response: requests.Response) -> dict[str, list[tuple[str, int]]]:
    """Get Block List's XML: {"CommittedBlocks": [(name, size), ...], "UncommittedBlocks": [...]} as present."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "BlockList"
    return {part.tag: [(b.findtext("Name"), int(b.findtext("Size"))) for b in part.iter("Block")] for part in root}


def test_get_block_list_lists_a_sessions_own_staged_blocks_and_no_content(server: Server) -> None:
    name, url = server.upload_url()
    _, other = server.upload_url()  # another session (another tenant's upload URL)
    assert error_code(requests.get(url + "&comp=blocklist&blocklisttype=uncommitted")) == "BlobNotFound"
    for index, data in ((1, b"b" * 700), (0, b"a" * 1000)):  # the seed's URL-safe ids, staged out of order
        block = base64.urlsafe_b64encode(index.to_bytes(4, "big")).decode()
        assert requests.put(f"{url}&comp=block&blockid={block}", data=data).status_code == 201
    ids = [base64.b64encode(i.to_bytes(4, "big")).decode() for i in (0, 1)]
    # The upload URL (sp=cw) lists its session's staged blocks, in the order they came, under standard Base64.
    listed = _block_list(requests.get(url + "&comp=blocklist&blocklisttype=uncommitted"))
    assert listed == {"UncommittedBlocks": [(ids[1], 700), (ids[0], 1000)]}
    r = requests.get(url + "&comp=blocklist&blocklisttype=uncommitted")
    assert r.headers["x-ms-blob-content-length"] == "0" and "ETag" not in r.headers  # nothing committed yet
    # ... but nothing that needs read permission (the committed list, the content), as on Azure.
    for query in ("&comp=blocklist", "&comp=blocklist&blocklisttype=all", ""):
        assert error_code(requests.get(url + query)) == "AuthorizationPermissionMismatch", query
    # Another session's URL sees none of them; a URL re-signed for this blob by hand does not verify.
    assert error_code(requests.get(other + "&comp=blocklist&blocklisttype=uncommitted")) == "BlobNotFound"
    forged = other.replace(other.split("?")[0].rsplit("/", 1)[1], name)
    assert error_code(requests.get(forged + "&comp=blocklist&blocklisttype=uncommitted")) == "AuthenticationFailed"

    xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
    assert requests.put(url + "&comp=blocklist", data=xml).status_code == 201
    assert _block_list(requests.get(url + "&comp=blocklist&blocklisttype=uncommitted")) == {"UncommittedBlocks": []}
    read = server.download_url(name)  # sp=r: the committed list (Azure's default type), with the blob's ETag
    r = requests.get(read + "&comp=blocklist")
    assert _block_list(r) == {"CommittedBlocks": [(ids[0], 1000), (ids[1], 700)]}
    assert r.headers["ETag"] == requests.head(read).headers["ETag"] and r.headers["x-ms-blob-content-length"] == "1700"
    assert _block_list(requests.get(read + "&comp=blocklist&blocklisttype=all")) == {
        "CommittedBlocks": [(ids[0], 1000), (ids[1], 700)],
        "UncommittedBlocks": [],
    }
    bad = requests.get(read + "&comp=blocklist&blocklisttype=everything")
    assert bad.status_code == 400 and error_code(bad) == "InvalidQueryParameterValue"


def test_get_block_list_through_the_azure_sdk(server: Server) -> None:
    blob = pytest.importorskip("azure.storage.blob")
    name, url = server.upload_url()
    client = blob.BlobClient.from_blob_url(url)
    client.stage_block("b1", b"x" * 10)
    client.stage_block("b2", b"y" * 20)
    committed, uncommitted = client.get_block_list("uncommitted")
    assert committed == [] and [(b.id, b.size) for b in uncommitted] == [("b1", 10), ("b2", 20)]
    client.commit_block_list(["b1", "b2"])
    committed, uncommitted = blob.BlobClient.from_blob_url(server.download_url(name)).get_block_list("all")
    assert [(b.id, b.size) for b in committed] == [("b1", 10), ("b2", 20)] and uncommitted == []
