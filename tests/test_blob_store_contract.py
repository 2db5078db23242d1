"""One contract, two stores: `LocalBlobStore` (behind the embedded endpoint on a real uvicorn) and
`AzureBlobStore` on Azurite (npm, pinned in package.json). Both must behave the same for the
service and for clients holding the URLs they sign."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from fastapi import FastAPI

from conftest import under_ci
from veil.api.blob import create_blob_router
from veil.storage.base import BlobNotFoundError, BlobStore
from veil.storage.local import LocalBlobStore
from veil.storage.testing import azurite, azurite_binary, free_port, serve_app

HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobStore]:
    port = free_port()
    store = LocalBlobStore(
        tmp_path_factory.mktemp("contract"), "veilcontract", os.urandom(32), f"http://127.0.0.1:{port}"
    )
    app = FastAPI()
    app.include_router(create_blob_router(store, lambda c, b, s: None))
    with serve_app(app, port):
        yield store


@pytest.fixture(scope="module")
def azurite_store() -> Iterator[BlobStore]:
    pytest.importorskip("azure.storage.blob")
    binary = azurite_binary()
    if binary is None:
        if under_ci():
            pytest.fail("node is required under CI to run Azurite")
        pytest.skip("node is not installed: cannot run Azurite for the AzureBlobStore contract")
    from veil.storage.azure import AzureBlobStore

    with azurite(binary) as connection_string:
        yield AzureBlobStore(connection_string)


@pytest.fixture(params=["local", "azurite"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    return request.getfixturevalue(f"{request.param}_store")


def _name(suffix: str = ".bin") -> str:
    return f"{uuid.uuid4()}{suffix}"


def _sas_error(response: requests.Response) -> str:
    """Our endpoint answers Azure's AuthenticationFailed; Azurite says AuthorizationFailure
    (notes pitfall 22)."""
    assert response.status_code == 403
    code = ET.fromstring(response.content).findtext("Code")
    assert code == response.headers["x-ms-error-code"]
    return code


def test_implements_protocol(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_write_read_list_delete(store: BlobStore, tmp_path: Path) -> None:
    prefix = f"jobs/{uuid.uuid4()}/"
    src = tmp_path / "in.bin"
    data = os.urandom(9 * 1024 * 1024 + 1)  # more than two 4 MiB chunks
    src.write_bytes(data)
    assert store.write("outputs", prefix + "a.bin", src) == len(data)
    assert store.write("outputs", prefix + "b.txt", io.BytesIO(b"hello")) == 5
    assert store.exists("outputs", prefix + "a.bin")
    assert store.size("outputs", prefix + "a.bin") == len(data)
    with store.open_read("outputs", prefix + "a.bin") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    with store.open_read("outputs", prefix + "b.txt") as f:
        assert f.read(2) == b"he" and f.read() == b"llo"
    assert store.list("outputs", prefix) == [prefix + "a.bin", prefix + "b.txt"]
    store.write("outputs", prefix + "b.txt", io.BytesIO(b"replaced"))
    assert store.open_read("outputs", prefix + "b.txt").read() == b"replaced"
    assert store.delete("outputs", prefix + "a.bin") is True
    assert store.delete("outputs", prefix + "a.bin") is False
    assert not store.exists("outputs", prefix + "a.bin")
    assert store.list("outputs", prefix) == [prefix + "b.txt"]


def test_missing_blob(store: BlobStore) -> None:
    name = _name()
    assert not store.exists("outputs", name)
    with pytest.raises(BlobNotFoundError):
        store.size("outputs", name)
    with pytest.raises(BlobNotFoundError):
        store.open_read("outputs", name)
    assert store.list("neverused", "") == []


def test_signed_upload_url_takes_the_seed_block_upload(store: BlobStore) -> None:
    name = _name()
    session_uri = store.signed_upload_url("uploads", name, HOUR)
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(10)]
    ids = []
    for chunk in chunks:
        block_id = base64.urlsafe_b64encode(len(ids).to_bytes(4, byteorder="big")).decode("utf-8")
        assert requests.put(session_uri + "&comp=block" + "&blockid=" + block_id, data=chunk).status_code == 201
        ids.append(block_id)
    xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
    assert requests.put(session_uri + "&comp=blocklist", data=xml).status_code == 201
    assert store.open_read("uploads", name).read() == b"".join(chunks)
    # The upload SAS cannot read back.
    assert requests.get(session_uri).status_code == 403


def test_signed_upload_url_takes_put_blob(store: BlobStore) -> None:
    name = _name()
    url = store.signed_upload_url("uploads", name, HOUR)
    assert requests.put(url, data=b"single put", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    assert store.size("uploads", name) == 10


def test_signed_download_url(store: BlobStore) -> None:
    name = _name(".jpg")
    store.write("outputs", name, io.BytesIO(b"0123456789"))
    url = store.signed_download_url("outputs", name, HOUR, filename="photo_blurred.jpg")
    r = requests.get(url)
    assert r.status_code == 200 and r.content == b"0123456789"
    assert r.headers["Content-Disposition"] == 'attachment; filename="photo_blurred.jpg"'
    r = requests.get(url, headers={"Range": "bytes=2-4"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    # Read-only: no writes through a download link.
    assert requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
    assert store.open_read("outputs", name).read() == b"0123456789"


def test_expired_and_tampered_urls_are_refused(store: BlobStore) -> None:
    name = _name()
    store.write("outputs", name, io.BytesIO(b"secret"))
    expired = store.signed_download_url("outputs", name, timedelta(seconds=-60))
    assert _sas_error(requests.get(expired)) in ("AuthenticationFailed", "AuthorizationFailure")
    url = store.signed_download_url("outputs", name, HOUR)
    assert _sas_error(requests.get(url.replace("sp=r", "sp=rw"))) in ("AuthenticationFailed", "AuthorizationFailure")


def test_upload_sas_parts_for_sdk_clients(store: BlobStore) -> None:
    blob = pytest.importorskip("azure.storage.blob")
    name = _name()
    parts = store.upload_sas_parts("uploads", name, HOUR)
    assert set(parts) == {"account_url", "container", "blob", "sas_token"}
    client = blob.BlobClient(
        parts["account_url"],
        parts["container"],
        parts["blob"],
        credential=parts["sas_token"],
        max_single_put_size=1024,
        max_block_size=1024,
    )
    data = os.urandom(5000)
    client.upload_blob(data)  # staged blocks
    assert store.open_read("uploads", name).read() == data


def test_a_frozen_blob_refuses_every_sas_write_with_the_lease_error(store: BlobStore) -> None:
    name = _name()
    url = store.signed_upload_url("uploads", name, HOUR)
    assert requests.put(url, data=b"priced", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    assert not store.frozen("uploads", name)
    store.freeze("uploads", name)
    store.freeze("uploads", name)  # idempotent
    assert store.frozen("uploads", name)
    writes = [
        requests.put(url, data=b"swapped", headers={"x-ms-blob-type": "BlockBlob"}),
        requests.put(url + "&comp=block&blockid=AAAAAA==", data=b"swapped"),
        requests.put(url + "&comp=blocklist", data="<BlockList></BlockList>"),
    ]
    for answer in writes:
        assert answer.status_code == 412 and answer.headers["x-ms-error-code"] == "LeaseIdMissing", answer.text
    assert store.open_read("uploads", name).read() == b"priced"
    assert store.delete("uploads", name) is True  # the service can still delete it
    assert not store.exists("uploads", name) and name not in store.list("uploads")
    assert store.delete("uploads", name) is False
    with pytest.raises(BlobNotFoundError):
        store.size("uploads", name)
    with pytest.raises(BlobNotFoundError):
        store.open_read("uploads", name)
    # ... and stays frozen while its upload URLs may be valid: they cannot re-create it.
    again = requests.put(url, data=b"swapped", headers={"x-ms-blob-type": "BlockBlob"})
    assert again.status_code == 412 and again.headers["x-ms-error-code"] == "LeaseIdMissing"
    store.cleanup(HOUR)
    assert requests.put(url, data=b"swapped", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 412
    store.cleanup(timedelta(0))  # once they have expired, nothing of it is left
    assert not store.frozen("uploads", name)
    assert requests.put(url, data=b"new", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
