"""Acceptance: the official `azure-storage-blob` SDK, unmodified, uploads (single put and staged
blocks) and downloads (ranged, MD5-validated) through the URLs the embedded store hands out."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI

from veil.api.blob import create_blob_router
from veil.storage.local import LocalBlobStore
from veil.storage.testing import free_port, serve_app

blob = pytest.importorskip("azure.storage.blob")
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError  # noqa: E402

HOUR = timedelta(hours=1)


@pytest.fixture(scope="module", params=["127.0.0.1", "localhost"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The SDK parses loopback URLs differently from custom hosts (pitfall 17): try both names."""
    port = free_port()
    store = LocalBlobStore(tmp_path_factory.mktemp("sdk"), "veilsdk", os.urandom(32), f"http://{request.param}:{port}")
    events: list[tuple[str, str, int]] = []
    app = FastAPI()
    app.include_router(create_blob_router(store, lambda c, b, s: events.append((c, b, s))))
    store.events = events  # type: ignore[attr-defined]
    with serve_app(app, port):
        yield store


def _name() -> str:
    return f"{uuid.uuid4()}.bin"


def _same_url(a: str, b: str) -> bool:
    (sa, qa), (sb, qb) = ((urlsplit(u)[:3], parse_qs(urlsplit(u).query)) for u in (a, b))
    return sa == sb and qa == qb


def test_from_blob_url_round_trips_the_session_uri(store: LocalBlobStore) -> None:
    session_uri = store.signed_upload_url("uploads", "a1b2.bin", HOUR)
    assert _same_url(blob.BlobClient.from_blob_url(session_uri).url, session_uri)
    # A public host name: the SDK takes the last two segments as container and blob instead.
    public = LocalBlobStore(store.root, store.account, store.key, "https://veil.example.com/prefix")
    session_uri = public.signed_upload_url("uploads", "c3d4.bin", HOUR)
    assert _same_url(blob.BlobClient.from_blob_url(session_uri).url, session_uri)


def test_single_put_and_staged_blocks(store: LocalBlobStore) -> None:
    small, staged = os.urandom(3000), os.urandom(70_000)
    name1, name2 = _name(), _name()
    blob.BlobClient.from_blob_url(store.signed_upload_url("uploads", name1, HOUR)).upload_blob(small)
    client = blob.BlobClient.from_blob_url(
        store.signed_upload_url("uploads", name2, HOUR), max_single_put_size=16 * 1024, max_block_size=16 * 1024
    )
    client.upload_blob(staged, validate_content=True, content_settings=blob.ContentSettings(content_type="video/mp4"))
    assert store.open_read("uploads", name1).read() == small
    assert store.open_read("uploads", name2).read() == staged
    assert store.properties("uploads", name2).content_type == "video/mp4"
    assert len(store.properties("uploads", name2).blocks) == 5  # 70,000 bytes in 16 KiB blocks
    assert ("uploads", name2, 70_000) in store.events  # type: ignore[attr-defined]
    # overwrite=False (the default) sends If-None-Match: * → ResourceExistsError
    with pytest.raises(ResourceExistsError):
        client.upload_blob(b"again")
    client.upload_blob(b"again", overwrite=True)
    assert store.open_read("uploads", name2).read() == b"again"


def test_upload_with_sas_parts(store: LocalBlobStore) -> None:
    name = _name()
    parts = store.upload_sas_parts("uploads", name, HOUR)
    service = blob.BlobServiceClient(parts["account_url"], credential=parts["sas_token"])
    service.get_blob_client(parts["container"], parts["blob"]).upload_blob(b"via parts")
    direct = blob.BlobClient(parts["account_url"], parts["container"], parts["blob"], credential=parts["sas_token"])
    direct.upload_blob(b"via parts, direct", overwrite=True)
    assert store.open_read("uploads", name).read() == b"via parts, direct"


def test_ranged_and_validated_downloads(store: LocalBlobStore) -> None:
    data = os.urandom(9 * 1024 * 1024 + 77)
    name = _name()
    store.write("uploads", name, io.BytesIO(data))
    link = store.signed_download_url("uploads", name, HOUR, filename="out.bin")
    client = blob.BlobClient.from_blob_url(link, max_single_get_size=1024 * 1024, max_chunk_get_size=1024 * 1024)
    assert client.download_blob(offset=10, length=25).readall() == data[10:35]
    assert (
        client.download_blob(offset=5_000_000, length=3_000_000, validate_content=True).readall()
        == data[5_000_000:8_000_000]
    )
    full = client.download_blob(validate_content=True)
    assert hashlib.sha256(full.readall()).digest() == hashlib.sha256(data).digest()
    props = client.get_blob_properties()
    assert props.size == len(data)
    assert props.content_settings.content_disposition == 'attachment; filename="out.bin"'
    assert client.exists()
    assert not blob.BlobClient.from_blob_url(store.signed_download_url("uploads", "missing.bin", HOUR)).exists()


def test_empty_blob_download(store: LocalBlobStore) -> None:
    name = _name()
    store.write("uploads", name, io.BytesIO(b""))
    client = blob.BlobClient.from_blob_url(store.signed_download_url("uploads", name, HOUR))
    assert client.download_blob().readall() == b""  # 416 on the ranged GET, then a 200 (§1.4)


def test_sdk_sees_azure_error_classes(store: LocalBlobStore) -> None:
    name = _name()
    store.write("uploads", name, io.BytesIO(b"x"))
    expired = blob.BlobClient.from_blob_url(store.signed_download_url("uploads", name, timedelta(seconds=-5)))
    with pytest.raises(ClientAuthenticationError):
        expired.download_blob().readall()
    read_only = blob.BlobClient.from_blob_url(store.signed_download_url("uploads", name, HOUR))
    with pytest.raises(HttpResponseError) as err:
        read_only.upload_blob(b"y", overwrite=True)
    assert err.value.error_code == "AuthorizationPermissionMismatch"
