"""Issue 9's upload attacks, replayed against the public API and the embedded blob endpoint (worker off,
jobs run by calling `process_job` where a test needs it): a committed input is frozen and the worker
never processes content other than what was priced."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from _service_helpers import jpeg_bytes, new_key, padded_jpeg, seed_upload, settings_for
from veil.api.app import create_app
from veil.jobs import keys
from veil.jobs.service import INPUT_CONTAINER
from veil.queue.tasks import process_job


@pytest.fixture()
def client(tmp_path):
    app = create_app(settings_for(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as http:
        http.svc = app.state.service
        yield http


def _zip_of_images(count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for n in range(count):
            archive.writestr(f"img{n}.jpg", jpeg_bytes(seed=n))
    return out.getvalue()


def _approved_cheap_job(http, key: str, size: int) -> tuple[str, str, bytes]:
    """A 1-credit JPEG padded to `size` bytes, uploaded the seed's way and approved."""
    cheap = padded_jpeg(size)
    r = http.post("/v1/create_upload_session", headers={"access_token": key},
                  json={"file_name": "cheap.jpg", "file_size": size})
    assert r.status_code == 200, r.text
    uri, job_id = r.json()["session_uri"], r.json()["job_id"]
    seed_upload(http, uri, cheap)
    approved = http.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert approved.status_code == 200 and approved.json()["job_total_credit_cost"] == 1, approved.text
    return job_id, uri, cheap


def _writes(http, uri: str, data: bytes) -> list:
    """Every way an upload URL writes: Put Block, Put Block List, Put Blob."""
    return [http.put(uri + "&comp=block&blockid=AAAAAA==", content=data),
            http.put(uri + "&comp=blocklist", content="<BlockList><Latest>AAAAAA==</Latest></BlockList>"),
            http.put(uri, content=data, headers={"x-ms-blob-type": "BlockBlob"})]


def _balance(svc, key: str) -> int:
    return keys.authenticate(svc.db, key).credits


def test_swapping_the_input_after_approval_is_refused_with_the_lease_error(client):
    """The attack: 1-credit JPEG padded to the zip's size, approve, re-PUT the 20-image zip."""
    key = new_key(client.svc, credits=100)
    archive = _zip_of_images(20)
    job_id, uri, cheap = _approved_cheap_job(client, key, len(archive))
    for answer in _writes(client, uri, archive):
        assert answer.status_code == 412, answer.text
        assert answer.headers["x-ms-error-code"] == "LeaseIdMissing" and "<Code>LeaseIdMissing</Code>" in answer.text
    assert client.svc.store.open_read(INPUT_CONTAINER, job_id).read() == cheap
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["state"] == "queued" and report["credits_charged"] == 1
    assert _balance(client.svc, key) == 99


def test_worker_refuses_and_refunds_content_other_than_what_was_priced(client, monkeypatch):
    """A store whose lease could not be taken: the swap lands, the worker's SHA-256 check stops it."""
    monkeypatch.setattr(client.svc.store, "freeze", lambda container, name: None, raising=False)
    key = new_key(client.svc, credits=100)
    archive = _zip_of_images(20)
    job_id, uri, _ = _approved_cheap_job(client, key, len(archive))
    seed_upload(client, uri, archive)  # same size, other content
    process_job(job_id, client.svc)
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["state"] == "failed", report
    assert "changed after it was priced" in report["job_status_description"]
    assert report["tasks"] == [] and report["credits_charged"] == 0
    assert _balance(client.svc, key) == 100


def test_old_upload_url_cannot_recreate_a_deleted_input(client):
    key = new_key(client.svc, credits=100)
    data = jpeg_bytes()
    r = client.post("/v1/create_upload_session", headers={"access_token": key},
                    json={"file_name": "p.jpg", "file_size": len(data)})
    uri, job_id = r.json()["session_uri"], r.json()["job_id"]
    seed_upload(client, uri, data)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key}).json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}/files", headers={"access_token": key}).status_code == 200
    for answer in _writes(client, uri, data):
        assert answer.status_code == 412 and answer.headers["x-ms-error-code"] == "LeaseIdMissing", answer.text
    assert not client.svc.store.exists(INPUT_CONTAINER, job_id)


def test_cancelled_before_upload_the_url_is_dead(client):
    key = new_key(client.svc, credits=100)
    r = client.post("/v1/create_upload_session", headers={"access_token": key}, json={"file_name": "p.jpg"})
    uri, job_id = r.json()["session_uri"], r.json()["job_id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key})
    answer = client.put(uri, content=b"late", headers={"x-ms-blob-type": "BlockBlob"})
    assert answer.status_code == 412 and not client.svc.store.exists(INPUT_CONTAINER, job_id)


def test_cleanup_drops_a_deleted_blobs_lease_once_its_urls_expired(client):
    store = client.svc.store
    uri = store.signed_upload_url(INPUT_CONTAINER, "orphan", timedelta(hours=1))
    assert client.put(uri, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    store.freeze(INPUT_CONTAINER, "orphan")
    store.delete(INPUT_CONTAINER, "orphan")
    store.cleanup(timedelta(hours=1))  # the lease is younger: kept
    assert store.frozen(INPUT_CONTAINER, "orphan")
    store.cleanup(timedelta(0))
    assert not store.frozen(INPUT_CONTAINER, "orphan")
