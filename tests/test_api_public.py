"""Public API (/v1) status codes and rules, through FastAPI's TestClient (worker off: no engine needed)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from fastapi.testclient import TestClient

from _service_helpers import app_client, jpeg_bytes, new_key, seed_upload, settings_for
from veil.api.app import create_app
from veil.jobs import callbacks
from veil.jobs.credits import ledger


@pytest.fixture()
def client(tmp_path):
    # the callback receivers here listen on loopback, allowed as an operator of an internal network would
    with app_client(tmp_path, callback_allowed_networks="127.0.0.1/32") as http:
        yield http


def _create(http, key, **body):
    payload = {
        "file_name": "dir/photo.jpg",
        "file_size": 100,
        "content_type": "octet-stream",
        "model": "blur",
        "model_config": {"blur_face": True},
    } | body
    headers = {"access_token": key} if key else {}
    return http.post("/v1/create_upload_session", headers=headers, json=payload)


def _uploaded_job(http, key, data: bytes | None = None) -> str:
    data = data or jpeg_bytes()
    r = _create(http, key, file_size=len(data))
    assert r.status_code == 200, r.text
    seed_upload(http, r.json()["session_uri"], data)
    return r.json()["job_id"]


def test_bad_or_missing_key_is_401(client):
    assert _create(client, None).status_code == 401
    assert _create(client, "not-a-key").status_code == 401
    assert _create(client, "00000000-0000-0000-0000-000000000000").status_code == 401
    assert client.get("/v1/jobs").status_code == 401


def test_invalid_requests_are_422_naming_the_problem(client):
    key = new_key(client.svc)
    r = _create(client, key, model_config={"blur_face": True, "colour": "red"})
    assert r.status_code == 422 and "colour" in r.text
    r = _create(client, key, model_config={"blur_threshold": 1.5})
    assert r.status_code == 422 and "blur_threshold" in r.text
    r = _create(client, key, model="swap")
    assert r.status_code == 422 and "blur" in r.text


def test_oversized_file_is_413(client):
    r = _create(client, new_key(client.svc), file_size=4 * 1024**3 + 1)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_session_upload_approve_flow(client):
    key = new_key(client.svc, credits=10)
    r = _create(client, key)
    job_id = r.json()["job_id"]
    assert r.status_code == 200 and "&" not in r.json()["session_uri"].split("?")[0]
    waiting = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}, follow_redirects=False)
    assert waiting.status_code == 302 and "location" not in waiting.headers

    data = jpeg_bytes()
    r = _create(client, key, file_size=len(data))
    job_id = r.json()["job_id"]
    seed_upload(client, r.json()["session_uri"], data)
    approve = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert approve.status_code == 200, approve.text
    assert client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}).status_code == 202
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["job_status"] == 0 and report["state"] == "queued"
    assert report["file_name"] == "photo.jpg" and report["file_size"] == len(data)
    cost = report["job_total_credit_cost"]
    assert cost >= 1 and report["credits_charged"] == cost
    alias = client.get(f"/v1/get_job_result/{job_id}", headers={"access_token": key}).json()
    assert alias["job_id"] == job_id
    balance = client.get("/admin/api/keys", headers={"Authorization": "Bearer admin-secret"}).json()
    assert balance[-1]["credits"] == 10 - cost


def test_not_enough_credits_is_402(client):
    key = new_key(client.svc, credits=0)
    job_id = _uploaded_job(client, key)
    r = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert r.status_code == 402 and "credits" in r.json()["detail"]
    assert client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()["state"] == "awaiting_approval"


def test_size_different_from_declared_fails_the_job_before_approval(client):
    key = new_key(client.svc)
    data = jpeg_bytes()
    r = _create(client, key, file_size=len(data) + 10)  # more than declared is refused by the blob endpoint
    seed_upload(client, r.json()["session_uri"], data)
    job_id = r.json()["job_id"]
    approve = client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key})
    assert approve.status_code == 202  # not a 4xx: the seed's client retries those forever
    assert approve.json()["detail"].startswith("job not approved (failed): ")  # the reason, in the answer itself
    assert f"declared {len(data) + 10}" in approve.json()["detail"]
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["job_status"] == 200 and f"declared {len(data) + 10}" in report["job_status_description"]
    assert report["credits_charged"] == 0 and report["files_deleted"] is True
    assert not client.svc.store.exists("uploads", job_id)


def test_another_keys_job_is_404_everywhere(client):
    owner, other = new_key(client.svc), new_key(client.svc)
    job_id = _uploaded_job(client, owner)
    for method, path in [
        ("GET", f"/v1/job_result/{job_id}"),
        ("GET", f"/v1/get_job_result/{job_id}"),
        ("POST", f"/v1/approve_job/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}/files"),
    ]:
        assert client.request(method, path, headers={"access_token": other}).status_code == 404, path
    r = client.post(
        "/v1/notify_on_job_status",
        headers={"access_token": other},
        json={"callback_url": "http://127.0.0.1:9/cb", "job_id": job_id},
    )
    assert r.status_code == 404
    assert client.get("/v1/jobs", headers={"access_token": other}).json()["total"] == 0
    assert client.get("/v1/job_result/nonsense", headers={"access_token": owner}).status_code == 404


def test_list_jobs_is_paginated(client):
    key = new_key(client.svc)
    ids = [_create(client, key).json()["job_id"] for _ in range(3)]
    page = client.get("/v1/jobs?limit=2&offset=0", headers={"access_token": key}).json()
    rest = client.get("/v1/jobs?limit=2&offset=2", headers={"access_token": key}).json()
    assert page["total"] == 3 and len(page["jobs"]) == 2 and len(rest["jobs"]) == 1
    assert {j["job_id"] for j in page["jobs"] + rest["jobs"]} == set(ids)


def test_cancel_queued_job_refunds_and_delete_needs_a_final_job(client):
    key = new_key(client.svc, credits=10)
    job_id = _uploaded_job(client, key)
    assert client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}).status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}/files", headers={"access_token": key}).status_code == 409
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key})
    assert r.status_code == 200 and r.json()["job_status"] == 200 and r.json()["state"] == "cancelled"
    assert r.json()["credits_refunded"] == r.json()["job_total_credit_cost"] > 0
    kinds = [e.kind for e in ledger(client.svc.db, job_id=job_id)]
    assert kinds == ["reserve", "refund"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key}).status_code == 409
    r = client.delete(f"/v1/jobs/{job_id}/files", headers={"access_token": key})
    assert r.status_code == 200 and r.json()["files_deleted"] is True


def test_direct_upload_redirects_with_307_and_names_the_job(client):
    key = new_key(client.svc)
    data = jpeg_bytes()
    r = client.put(
        "/v1/direct_upload?file_name=a.jpg",
        content=data,
        follow_redirects=False,
        headers={"access_token": key, "x-ms-blob-type": "BlockBlob"},
    )
    assert r.status_code == 307
    job_id = r.headers["x-veil-job-id"]
    assert r.json()["job_id"] == job_id and r.headers["location"] == r.json()["session_uri"]
    put = client.put(r.headers["location"], content=data, headers={"x-ms-blob-type": "BlockBlob"})
    assert put.status_code == 201
    assert client.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}).status_code == 200
    r = client.put("/v1/direct_upload", content=data, headers={"access_token": key})
    assert r.status_code == 400 and "x-ms-blob-type" in r.text


def test_unexpected_error_is_a_json_500_with_request_id(client, monkeypatch):
    key = new_key(client.svc)
    job_id = _create(client, key).json()["job_id"]
    monkeypatch.setattr(client.svc, "report", lambda job: 1 / 0)
    r = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key})
    assert r.status_code == 500 and r.json()["request_id"] and "Traceback" not in r.text


def test_callback_is_signed_when_upload_awaits_approval(client):
    received, secret = [], []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = callbacks.verify(
                body,
                secret[0],
                self.headers.get(callbacks.SIGNATURE_HEADER),
                self.headers.get(callbacks.TIMESTAMP_HEADER),
            )
            received.append((ok, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = new_key(client.svc)
        r = client.post(
            "/v1/notify_on_job_status",
            headers={"access_token": key},
            json={"callback_url": f"http://127.0.0.1:{server.server_port}/hook"},
        )
        assert r.status_code == 200
        secret.append(r.json()["signing_secret"])
        bad = client.post(
            "/v1/notify_on_job_status", headers={"access_token": key}, json={"callback_url": "ftp://example.org/x"}
        )
        assert bad.status_code == 422 and "http" in bad.text
        job_id = _uploaded_job(client, key)
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received, "no callback arrived"
        ok, report = received[0]
        assert ok and report["job_id"] == job_id and report["state"] == "awaiting_approval"
        assert report["job_total_credit_cost"] >= 1
    finally:
        server.shutdown()


def test_admin_api_needs_the_token_and_manages_keys(client, tmp_path):
    assert client.get("/admin/api/keys").status_code == 401
    assert client.get("/admin/api/keys", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": "Bearer admin-secret"}
    created = client.post("/admin/api/keys", headers=auth, json={"credits": 3, "name": "ci"})
    assert created.status_code == 201 and len(created.json()["key"]) == 36
    key, key_id = created.json()["key"], created.json()["id"]
    r = client.post(f"/admin/api/keys/{key_id}/credits", headers=auth, json={"amount": 4})
    assert r.json()["credits"] == 7
    assert client.get("/v1/jobs", headers={"access_token": key}).status_code == 200
    assert client.post(f"/admin/api/keys/{key_id}/revoke", headers=auth).json()["revoked"] is True
    assert client.get("/v1/jobs", headers={"access_token": key}).status_code == 401
    assert client.get("/admin/api/jobs", headers=auth).status_code == 200
    disabled = create_app(settings_for(tmp_path / "other"))
    with TestClient(disabled) as http:
        assert http.get("/admin/api/keys", headers=auth).status_code == 403


def test_start_upload_gives_sdk_parts_valid_for_seven_days(client):
    from datetime import datetime, timedelta
    from urllib.parse import parse_qs

    r = client.post(
        "/v1/start_upload", headers={"access_token": new_key(client.svc)}, json={"file_name": "a.jpg", "file_size": 10}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["blob"] == body["job_id"] and body["container"] and body["account_url"]
    expiry = parse_qs(body["sas_token"])["se"][0]
    expected = datetime.now(UTC) + timedelta(days=7)
    assert abs(datetime.fromisoformat(expiry.replace("Z", "+00:00")) - expected) < timedelta(minutes=10)
    assert parse_qs(body["sas_token"])["sp"][0] == "cw"


def test_openapi_documents_the_seed_routes_and_fields(client):
    spec = client.get("/openapi.json").json()
    for route in [
        "/v1/create_upload_session",
        "/v1/start_upload",
        "/v1/direct_upload",
        "/v1/approve_job/{job_id}",
        "/v1/job_result/{job_id}",
        "/v1/get_job_result/{job_id}",
        "/v1/notify_on_job_status",
    ]:
        assert route in spec["paths"], route
    report = spec["components"]["schemas"]["JobReport"]["properties"]
    assert {"job_id", "job_status", "job_status_description", "job_total_credit_cost", "tasks", "model_config"} <= set(
        report
    )
    assert client.get("/docs").status_code == 200
    key = new_key(client.svc)
    job_id = _create(client, key, model_config={"enable_lp": True}).json()["job_id"]
    report = client.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()
    assert report["model_config"]["enable_lp"] is True and report["tasks"] == []


def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not(tmp_path):
    with app_client(tmp_path, api_rate_limit="3/minute") as http:
        busy, other = new_key(http.svc), new_key(http.svc)
        answers = [http.get("/v1/jobs", headers={"access_token": busy}).status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        limited = http.get("/v1/jobs", headers={"access_token": busy})
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "too many requests" in limited.json()["detail"]
        assert http.get("/v1/jobs", headers={"access_token": other}).status_code == 200  # another key: not slowed
        assert http.get("/v1/jobs", headers={"access_token": "x" * 36}).status_code == 401  # no key: no count


def test_an_invalid_rate_limit_stops_the_start_up_naming_the_setting():
    from pydantic import ValidationError

    from veil.settings import Settings

    with pytest.raises(ValidationError, match="api_rate_limit"):
        Settings(api_rate_limit="lots per second")


def test_direct_upload_takes_the_reference_form_and_keeps_the_model_config_form(client):
    """`PUT /v1/direct_upload/{name}?enable_lp=False` and `PUT /v1/direct_upload?file_name=..&model_config=<json>`
    make the same job; a key in both places, or an unknown parameter, is a 422 naming it."""
    key = new_key(client.svc)
    headers = {"access_token": key, "x-ms-blob-type": "BlockBlob"}
    data = jpeg_bytes()
    jobs = []
    for url in (
        "/v1/direct_upload/p.jpg?model=blur&enable_lp=False&blur_threshold=0.25&video_crf=30",
        '/v1/direct_upload?file_name=p.jpg&model_config={"enable_lp":false,"blur_threshold":0.25,"video_crf":30}',
    ):
        r = client.put(url, content=data, headers=headers, follow_redirects=False)
        assert r.status_code == 307, r.text
        assert r.headers["job_id"] == r.headers["x-veil-job-id"] == r.json()["job_id"]
        assert r.headers["location"] == r.json()["url"]
        jobs.append(client.svc.get_job(r.json()["job_id"]))
    assert jobs[0].model_config_json == jobs[1].model_config_json
    assert jobs[0].model_config_json["enable_lp"] is False and jobs[0].model_config_json["video_crf"] == 30
    both = client.put(
        '/v1/direct_upload/p.jpg?enable_lp=True&model_config={"enable_lp":true}',
        content=data,
        headers=headers,
        follow_redirects=False,
    )
    assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["query", "enable_lp"]
    stray = client.put("/v1/direct_upload/p.jpg?file_name=q.jpg", content=data, headers=headers, follow_redirects=False)
    assert stray.status_code == 422 and stray.json()["detail"][0]["loc"] == ["query", "file_name"]


def test_defaults_find_and_track_plates(client):
    """enable_lp and lp_track are on unless a client sends false (the privacy-safe reading of the vendor's pages)."""
    key = new_key(client.svc)
    r = client.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": "a.jpg", "file_size": 10, "model_config": {"blur_face": True}},
    )
    config = client.svc.get_job(r.json()["job_id"]).model_config_json
    assert config["enable_lp"] is True and config["lp_track"] is True


def test_the_upload_limit_is_the_references_4294967295_bytes(client):
    key = new_key(client.svc)
    for size, status in ((4294967295, 200), (4294967296, 413)):
        r = client.post(
            "/v1/create_upload_session", headers={"access_token": key}, json={"file_name": "a.mp4", "file_size": size}
        )
        assert r.status_code == status, r.text
