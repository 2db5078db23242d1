"""The service on the Azure backend (Azurite): the seed's upload goes straight to the account, and with
no upload event the service finds the committed blob itself (approve polls it, notes §5)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from _service_helpers import jpeg_bytes, new_key, seed_upload, settings_for
from veil.api.app import create_app


@pytest.fixture(scope="module")
def connection_string(azurite_connection_string):
    return azurite_connection_string


def test_seed_upload_to_azurite_then_approve(tmp_path, connection_string):
    settings = settings_for(tmp_path, storage_backend="azure", azure_connection_string=connection_string, worker="none")
    app = create_app(settings)
    with TestClient(app) as client:
        key = new_key(app.state.service, credits=5)
        data = jpeg_bytes()
        r = client.post(
            "/v1/create_upload_session",
            headers={"access_token": key},
            json={"file_name": "p.jpg", "file_size": len(data), "model": "blur", "model_config": {}},
        )
        assert r.status_code == 200, r.text
        uri, job_id = r.json()["session_uri"], r.json()["job_id"]
        assert uri.startswith("http://127.0.0.1:") and "/devstoreaccount1/uploads/" in uri
        waiting = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}, follow_redirects=False)
        assert waiting.status_code == 302 and "location" not in waiting.headers
        with httpx.Client() as http:
            seed_upload(http, uri, data)
        approved = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
        assert approved.status_code == 200, approved.text
        report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
        assert report["state"] == "queued" and report["file_size"] == len(data)
        assert report["job_total_credit_cost"] == report["credits_charged"] >= 1
        # The input is frozen (an infinite lease): the upload URL can no longer replace it (issue 9 finding 1).
        with httpx.Client() as http:
            swap = http.put(uri, content=jpeg_bytes(seed=1), headers={"x-ms-blob-type": "BlockBlob"})
        assert swap.status_code == 412 and swap.headers["x-ms-error-code"] == "LeaseIdMissing"
        assert app.state.service.store.open_read("uploads", job_id).read() == data


def test_celery_mode_polls_the_upload_so_cost_and_callback_come_before_approval(tmp_path, connection_string):
    """No events from Azurite and nobody calls approve: the API's sweeper finds the committed upload,
    prices it and sends the signed "awaiting approval" callback."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from veil.jobs import callbacks

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append((self.rfile.read(int(self.headers["Content-Length"])), dict(self.headers)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    settings = settings_for(
        tmp_path,
        storage_backend="azure",
        azure_connection_string=connection_string,
        worker="celery",
        upload_poll_seconds=0.2,
        callback_allowed_networks="127.0.0.1/32",
    )  # the receiver above, on loopback
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            key = new_key(app.state.service, credits=5)
            r = client.post(
                "/v1/notify_on_job_status",
                headers={"access_token": key},
                json={"callback_url": f"http://127.0.0.1:{hook.server_port}/hook"},
            )
            secret = r.json()["signing_secret"]
            data = jpeg_bytes()
            r = client.post(
                "/v1/create_upload_session",
                headers={"access_token": key},
                json={"file_name": "p.jpg", "file_size": len(data), "model": "blur", "model_config": {}},
            )
            uri, job_id = r.json()["session_uri"], r.json()["job_id"]
            with httpx.Client() as http:
                seed_upload(http, uri, data)
            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert received, "no callback before approval"
            body, headers = received[0]
            assert callbacks.verify(
                body, secret, headers[callbacks.SIGNATURE_HEADER], headers[callbacks.TIMESTAMP_HEADER]
            )
            sent = json.loads(body)
            assert sent["job_id"] == job_id and sent["state"] == "awaiting_approval"
            report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
            assert report["job_total_credit_cost"] == sent["job_total_credit_cost"] >= 1
            assert report["approved_at"] is None
    finally:
        hook.shutdown()
