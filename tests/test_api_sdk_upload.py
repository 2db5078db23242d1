"""`/v1/start_upload` for Azure SDK clients, against a real uvicorn on loopback: the official
azure-storage-blob SDK uploads (staged blocks) with the returned parts and the job becomes approvable."""

from __future__ import annotations

import requests

from _service_helpers import jpeg_bytes, new_key, settings_for
from veil.api.app import create_app
from veil.storage.testing import free_port, serve_app


def test_sdk_upload_with_start_upload_parts(tmp_path):
    from azure.storage.blob import BlobClient

    port = free_port()
    app = create_app(settings_for(tmp_path, port=port))
    with serve_app(app, port) as base:
        key = new_key(app.state.service, credits=5)
        data = jpeg_bytes(640, 480)
        r = requests.post(
            f"{base}/v1/start_upload",
            headers={"access_token": key},
            timeout=10,
            json={"file_name": "p.jpg", "file_size": len(data), "model": "blur"},
        )
        assert r.status_code == 200, r.text
        parts = r.json()
        blob = BlobClient(
            parts["account_url"],
            parts["container"],
            parts["blob"],
            credential=parts["sas_token"],
            max_single_put_size=4 * 1024,
            max_block_size=4 * 1024,
        )
        blob.upload_blob(data)  # 4 KiB blocks: Put Block ×n + Put Block List through the SDK
        approved = requests.post(f"{base}/v1/approve_job/{parts['job_id']}", headers={"access_token": key}, timeout=30)
        assert approved.status_code == 200, approved.text
        report = requests.get(
            f"{base}/v1/job_result/{parts['job_id']}", headers={"access_token": key}, timeout=10
        ).json()
        assert report["state"] == "queued" and report["file_size"] == len(data)
