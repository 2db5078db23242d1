"""Issue 9's upload attacks, replayed against the public API and the embedded blob endpoint (worker off,
jobs run by calling `process_job` where a test needs it): a committed input is frozen and the worker
never processes content other than what was priced."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from _service_helpers import jpeg_bytes, new_key, padded_jpeg, seed_upload, settings_for
from veil.api.app import create_app
from veil.db.models import Job, utcnow
from veil.jobs import keys
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER
from veil.storage.testing import free_port, serve_app


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


def _session(http, key: str, size: int | None = None, name: str = "p.jpg") -> tuple[str, str]:
    """A new job: (session_uri, job_id)."""
    r = http.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": name, **({"file_size": size} if size is not None else {})},
    )
    assert r.status_code == 200, r.text
    return r.json()["session_uri"], r.json()["job_id"]


def _approved_cheap_job(http, key: str, size: int) -> tuple[str, str, bytes]:
    """A 1-credit JPEG padded to `size` bytes, uploaded the seed's way and approved."""
    cheap = padded_jpeg(size)
    uri, job_id = _session(http, key, size, "cheap.jpg")
    seed_upload(http, uri, cheap)
    approved = http.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert approved.status_code == 200 and approved.json()["job_total_credit_cost"] == 1, approved.text
    return job_id, uri, cheap


def _writes(http, uri: str, data: bytes) -> list:
    """Every way an upload URL writes: Put Block, Put Block List, Put Blob."""
    return [
        http.put(uri + "&comp=block&blockid=AAAAAA==", content=data),
        http.put(uri + "&comp=blocklist", content="<BlockList><Latest>AAAAAA==</Latest></BlockList>"),
        http.put(uri, content=data, headers={"x-ms-blob-type": "BlockBlob"}),
    ]


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
    uri, job_id = _session(client, key, len(data))
    seed_upload(client, uri, data)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key}).json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}/files", headers={"access_token": key}).status_code == 200
    for answer in _writes(client, uri, data):
        assert answer.status_code == 412 and answer.headers["x-ms-error-code"] == "LeaseIdMissing", answer.text
    assert not client.svc.store.exists(INPUT_CONTAINER, job_id)


def test_cancelled_before_upload_the_url_is_dead(client):
    key = new_key(client.svc, credits=100)
    uri, job_id = _session(client, key)
    client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key})
    answer = client.put(uri, content=b"late", headers={"x-ms-blob-type": "BlockBlob"})
    assert answer.status_code == 412 and not client.svc.store.exists(INPUT_CONTAINER, job_id)


# --- finding 4: amplification ---------------------------------------------------------------------


def test_a_block_list_cannot_commit_more_than_the_declared_size(client):
    """A 5 KB list naming one 1 MiB block 200 times, from a key with no credits."""
    key = new_key(client.svc, credits=0)
    block = b"\0" * (1024 * 1024)
    uri, job_id = _session(client, key, len(block), "big.mp4")
    assert client.put(uri + "&comp=block&blockid=AAAAAA==", content=block).status_code == 201
    answer = client.put(
        uri + "&comp=blocklist", content="<BlockList>" + "<Latest>AAAAAA==</Latest>" * 200 + "</BlockList>"
    )
    assert answer.status_code == 413 and answer.headers["x-ms-error-code"] == "RequestBodyTooLarge"
    assert "209715200 bytes" in answer.text and f"<MaxLimit>{len(block)}</MaxLimit>" in answer.text
    assert not client.svc.store.exists(INPUT_CONTAINER, job_id)
    answer = client.put(uri, content=block + b"!", headers={"x-ms-blob-type": "BlockBlob"})
    assert answer.status_code == 413 and answer.headers["x-ms-error-code"] == "RequestBodyTooLarge"
    assert (
        client.put(uri + "&comp=blocklist", content="<BlockList><Latest>AAAAAA==</Latest></BlockList>").status_code
        == 201
    )


def test_uploads_never_approved_expire_and_their_files_are_deleted(client):
    key = new_key(client.svc, credits=10)
    data = jpeg_bytes()
    uri, job_id = _session(client, key, len(data))
    seed_upload(client, uri, data)
    client.svc.price_job(job_id)
    assert client.svc.get_job(job_id).status == "awaiting_approval"
    client.svc.housekeeping()
    assert client.svc.get_job(job_id).status == "awaiting_approval"  # 7 days by default
    with client.svc.db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(uploaded_at=utcnow() - timedelta(days=8)))
    client.svc.housekeeping()
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["state"] == "failed" and "not approved within 7 days" in report["job_status_description"]
    assert report["files_deleted"] is True and not client.svc.store.exists(INPUT_CONTAINER, job_id)
    approve = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert approve.status_code == 202  # not a 4xx: the seed's client retries those forever
    assert approve.json()["detail"].startswith("job not approved (failed): ")  # the reason, in the answer itself
    assert "not approved within 7 days" in approve.json()["detail"]
    assert _balance(client.svc, key) == 10
    assert client.put(uri, content=data, headers={"x-ms-blob-type": "BlockBlob"}).status_code == 412


# --- finding 5: unbounded requests --------------------------------------------------------------


def test_json_bodies_over_the_limit_are_413_before_parsing(client):
    key = new_key(client.svc)
    huge = {"file_name": "a.jpg", "content_type": "x" * (1024 * 1024)}
    r = client.post("/v1/create_upload_session", headers={"access_token": key}, json=huge)
    assert r.status_code == 413 and "65536-byte limit" in r.json()["detail"]

    def chunked():  # no Content-Length
        yield b'{"file_name": "a.jpg", "content_type": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(
        "/v1/create_upload_session",
        headers={"access_token": key, "content-type": "application/json"},
        content=chunked(),
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    small = client.post(
        "/v1/create_upload_session",
        headers={"access_token": key, "content-type": "application/json"},
        content=iter([b'{"file_name": "a.jpg"}']),
    )
    assert small.status_code == 200, small.text


def test_content_type_is_bounded(client):
    key = new_key(client.svc)
    r = client.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": "a.jpg", "content_type": "x" * 101},
    )
    assert r.status_code == 422 and "content_type" in r.text


@pytest.fixture()
def live(tmp_path):
    """The app on a real loopback uvicorn (stalled sockets need a real server), with short upload timeouts."""
    port = free_port()
    app = create_app(settings_for(tmp_path, port=port, upload_idle_timeout_seconds=3, max_concurrent_uploads_per_key=2))
    with serve_app(app, port) as base, httpx.Client(base_url=base, timeout=30) as http:
        http.svc = app.state.service
        yield http


def _stalled_put(url: str) -> socket.socket:
    """A Put Blob that announces 1000 bytes and sends 10."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "x-ms-blob-type: BlockBlob\r\n\r\n".encode()
        + b"0123456789"
    )
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_stalled_upload_is_answered_408_and_closed(live):
    with _stalled_put(_session(live, new_key(live.svc), 1000)[0]) as sock:
        answer = _read_until_closed(sock)  # returns only because the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408") and b"x-ms-error-code: OperationTimedOut" in answer


def test_a_stalled_direct_upload_is_answered_408_and_closed(live):
    key = new_key(live.svc)
    with socket.create_connection(("127.0.0.1", int(live.base_url.port)), timeout=30) as sock:
        sock.sendall(
            f"PUT /v1/direct_upload?file_name=a.jpg HTTP/1.1\r\nHost: x\r\naccess_token: {key}\r\n"
            "Content-Length: 1000\r\nx-ms-blob-type: BlockBlob\r\n\r\n0123456789".encode()
        )
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"too slowly" in answer


def test_concurrent_uploads_per_key_are_capped(live):
    key = new_key(live.svc)
    stalled = [_stalled_put(_session(live, key, 1000)[0]) for _ in range(2)]
    try:
        third = _session(live, key, 1000)[0] + "&comp=block&blockid=AAAAAA=="
        for _ in range(100):  # until the server has taken both stalled bodies in
            answer = live.put(third, content=b"x")
            if answer.status_code != 201:
                break
            time.sleep(0.02)
        assert answer.status_code == 503 and answer.headers["x-ms-error-code"] == "ServerBusy", answer.text
        assert "2 uploads at once" in answer.text
        other_key = _session(live, new_key(live.svc), 1000)[0] + "&comp=block&blockid=AAAAAA=="
        assert live.put(other_key, content=b"x").status_code == 201
    finally:
        for sock in stalled:
            sock.close()
