"""The service on the Azure backend (Azurite): the seed's upload goes straight to the account, and with
no upload event the service finds the committed blob itself (approve polls it, notes §5)."""

from __future__ import annotations

import pytest
import httpx
from fastapi.testclient import TestClient

from _service_helpers import jpeg_bytes, new_key, seed_upload, settings_for
from veil.api.app import create_app


@pytest.fixture(scope="module")
def connection_string():
    from veil.storage.testing import azurite, azurite_binary

    try:
        binary = azurite_binary(install=False)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if binary is None:
        pytest.skip("Azurite needs node")
    with azurite(binary) as conn:
        yield conn


def test_seed_upload_to_azurite_then_approve(tmp_path, connection_string):
    settings = settings_for(tmp_path, storage_backend="azure", azure_connection_string=connection_string,
                            worker="none")
    app = create_app(settings)
    with TestClient(app) as client:
        key = new_key(app.state.service, credits=5)
        data = jpeg_bytes()
        r = client.post("/v1/create_upload_session", headers={"access_token": key},
                        json={"file_name": "p.jpg", "file_size": len(data), "model": "blur", "model_config": {}})
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
