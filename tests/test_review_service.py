"""Detect once, render many, in the service (issue 20): every task keeps its detections document beside its
output; `POST /v1/render_job/{id}` renders again with overrides and edits, priced and reserved like an
approval; `model_config.review: true` waits for that call, which the seed's client sits through unchanged.
The jobs run through the real worker code (`process_job`) on SQLite, or PostgreSQL in the second run."""

from __future__ import annotations

import gzip
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from _service_helpers import app_client, database_url_for, new_key, seed_upload
from veil.jobs.credits import ledger
from veil.jobs.runner import process_job

PHOTO = "dlib_faces/images/dlib_2008_001322.jpg"
BOX = [10, 10, 70, 60]  # a corner with no face


@pytest.fixture()
def client(tmp_path, detection_models):
    with app_client(tmp_path, render_price_fraction=0.5) as http:
        yield http


def _job(http, key: str, data: bytes, config: dict, file_name: str = "photo.jpg") -> str:
    """An approved job of `data` (not yet processed)."""
    r = http.post(
        "/v1/create_upload_session",
        headers={"access_token": key},
        json={"file_name": file_name, "file_size": len(data), "model_config": config},
    )
    assert r.status_code == 200, r.text
    seed_upload(http, r.json()["session_uri"], data)
    assert http.post(f"/v1/approve_job/{r.json()['job_id']}", headers={"access_token": key}).status_code == 200
    return r.json()["job_id"]


def _result(http, key: str, job_id: str) -> dict:
    return http.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()


def _download(http, link: str) -> bytes:
    r = http.get(link)
    assert r.status_code == 200
    return r.content


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _render(http, key: str, job_id: str, body: dict):
    return http.post(f"/v1/render_job/{job_id}", headers={"access_token": key}, json=body)


def test_a_job_keeps_its_document_and_renders_again_with_overrides_and_edits(client, shared_data):
    key = new_key(client.svc, credits=10)
    data = (shared_data / PHOTO).read_bytes()
    job_id = _job(client, key, data, {"enable_lp": False})
    process_job(job_id, client.svc)
    first = _result(client, key, job_id)
    assert first["job_status"] == 100
    [task] = first["tasks"]
    document = gzip.decompress(_download(client, task["detections_link"])).decode().splitlines()
    assert json.loads(document[0])["format"] == "veil-detections" and len(document) == 2
    assert task["report"]["faces"]["regions"] == task["detections"] > 0
    old_link, old_output = task["download_link"], _download(client, task["download_link"])

    body = {
        "model_config": {"style": "solid"},
        "edits": {"0": [{"op": "add", "kind": "face", "frames": {"0": BOX}, "by": "ana@example.com"}]},
    }
    queued = _render(client, key, job_id, body)
    assert queued.status_code == 202, queued.text
    assert queued.json()["job_status"] == 0 and queued.json()["tasks"][0]["download_link"]  # the old one still
    assert _download(client, old_link) == old_output
    process_job(job_id, client.svc)
    second = _result(client, key, job_id)
    assert second["job_status"] == 100, second["job_status_description"]
    [task] = second["tasks"]
    output = _pixels(_download(client, task["download_link"]))
    x1, y1, x2, y2 = BOX
    assert output[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5].mean() < 20  # the added box, drawn solid
    assert task["detections"] == first["tasks"][0]["detections"] + 1 and task["report"]["edits"] == 1
    entries = [(e.kind, e.amount) for e in ledger(client.svc.db, key_id=client.svc.get_job(job_id).key_id)]
    assert entries[-2:] == [("reserve", -1), ("reserve", -1)]  # the job (1), then the render (half, at least 1)
    assert second["credits_charged"] == 2


def test_review_waits_for_a_render_and_its_first_render_is_included(client, shared_data):
    key = new_key(client.svc, credits=10)
    job_id = _job(client, key, (shared_data / PHOTO).read_bytes(), {"review": True, "enable_lp": False})
    process_job(job_id, client.svc)
    waiting = _result(client, key, job_id)
    assert waiting["state"] == "awaiting_review" and waiting["job_status"] == 0
    assert "awaiting review" in waiting["job_status_description"]
    [task] = waiting["tasks"]
    assert task["download_link"] is None and task["detections_link"] and task["report"]["faces"]["regions"] > 0
    assert _render(client, key, job_id, {"model_config": {"blur_threshold": 0.3}}).status_code == 202
    process_job(job_id, client.svc)
    done = _result(client, key, job_id)
    assert done["job_status"] == 100 and done["tasks"][0]["download_link"]
    assert done["credits_charged"] == 1  # the render was included


def test_render_requests_are_validated(client, shared_data):
    key, other = new_key(client.svc, credits=10), new_key(client.svc)
    job_id = _job(client, key, (shared_data / PHOTO).read_bytes(), {"enable_lp": False})
    assert _render(client, key, job_id, {}).status_code == 409  # not finished yet
    process_job(job_id, client.svc)
    assert _render(client, other, job_id, {}).status_code == 404  # another key's job
    bad = [
        ({"model_config": {"slicing": True}}, ["model_config", "slicing"]),
        ({"model_config": {"enable_lp": True}}, ["model_config", "enable_lp"]),
        ({"model_config": {"blur_threshold": 0.01}}, ["model_config"]),
        (
            {"edits": {"0": [{"op": "add", "kind": "face", "frames": {"0": [0, 0, 5000, 10]}}]}},
            ["edits", "0", 0, "frames", 0],
        ),
        ({"edits": {"0": [{"op": "remove", "ids": ["0.999"]}]}}, ["edits", "0", 0, "ids"]),
        ({"edits": {"0": [{"op": "paint"}]}}, ["edits", "0"]),
        ({"edits": {"7": []}}, ["edits", "7"]),
    ]
    for body, loc in bad:
        r = _render(client, key, job_id, body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"][: len(loc)] == loc, (body, r.json())
    assert client.svc.get_job(job_id).status == "completed"  # nothing was queued or charged
    assert [e.kind for e in ledger(client.svc.db, key_id=client.svc.get_job(job_id).key_id)][-1] == "reserve"


@pytest.mark.slow
@pytest.mark.both_databases
def test_concurrent_render_calls_on_a_balance_that_covers_one(tmp_path, shared_data, detection_models):
    """Twenty render calls at once over three completed jobs, the balance covering one render: exactly one
    is accepted, the others answered 402 or 409, the balance never below zero."""
    from _live_server import veil_server
    from veil.db.session import open_database
    from veil.jobs.keys import create_key

    data_dir = tmp_path / "data"
    url = database_url_for(data_dir) or f"sqlite:///{data_dir / 'veil.db'}"  # PostgreSQL in the second run
    env = {"VEIL_RENDER_PRICE_FRACTION": "1", "VEIL_API_RATE_LIMIT": "1000/second", "VEIL_DATABASE_URL": url}
    with veil_server(data_dir, env=env) as base:
        engine, db = open_database(url)
        key, row = create_key(db, 3)
        jobs = []
        for _ in range(3):
            r = requests.post(
                f"{base}/v1/create_upload_session",
                headers={"access_token": key},
                timeout=30,
                json={
                    "file_name": "p.jpg",
                    "file_size": len(photo := (shared_data / PHOTO).read_bytes()),
                    "model_config": {"enable_lp": False},
                },
            )
            uri = r.json()["session_uri"]
            assert requests.put(uri, data=photo, headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).status_code == 201
            jobs.append(r.json()["job_id"])
        for job_id in jobs:
            while (
                requests.post(f"{base}/v1/approve_job/{job_id}", headers={"access_token": key}, timeout=30).status_code
                == 302
            ):
                threading.Event().wait(0.2)
        for job_id in jobs:
            while (
                requests.get(f"{base}/v1/job_result/{job_id}", headers={"access_token": key}, timeout=30).json()[
                    "job_status"
                ]
                != 100
            ):
                threading.Event().wait(0.3)
        with ThreadPoolExecutor(20) as pool:  # balance now 0: one more credit covers one render
            from veil.jobs.credits import add_credits

            add_credits(db, row.id, 1, reason="test")
            answers = list(
                pool.map(
                    lambda n: (
                        requests.post(
                            f"{base}/v1/render_job/{jobs[n % 3]}", headers={"access_token": key}, json={}, timeout=60
                        ).status_code
                    ),
                    range(20),
                )
            )
        assert answers.count(202) == 1 and set(answers) <= {202, 402, 409}, answers
        with db() as session:
            from veil.db.models import ApiKey

            assert session.get(ApiKey, row.id).credits == 0
        engine.dispose()


@pytest.mark.slow
@pytest.mark.both_databases
def test_the_seed_client_unchanged_sits_through_review(tmp_path, shared_data, detection_models, monkeypatch):
    """`review: true` with the seed's sample client running in a thread: it keeps polling (job_status 0) while
    the job awaits review, and downloads the rendered output once a reviewer's render call went through."""
    import seed_client
    from _live_server import veil_server
    from veil.db.session import open_database
    from veil.jobs.keys import create_key

    data_dir = tmp_path / "data"
    url = database_url_for(data_dir) or f"sqlite:///{data_dir / 'veil.db'}"  # PostgreSQL in the second run
    with veil_server(data_dir, env={"VEIL_DATABASE_URL": url}) as base:
        engine, db = open_database(url)
        key, _ = create_key(db, 10)
        engine.dispose()
        monkeypatch.setattr(seed_client, "API_URL", f"{base}/v1")
        monkeypatch.setattr(seed_client, "SLEEP_SECONDS", 0.3)
        out = tmp_path / "out"
        out.mkdir()
        photo = tmp_path / "photo.jpg"
        photo.write_bytes((shared_data / PHOTO).read_bytes())
        monkeypatch.chdir(out)
        client = threading.Thread(
            target=seed_client.process_file,
            daemon=True,
            kwargs={"file_name": str(photo), "api_key": key, "model_config": {"review": True, "enable_lp": False}},
        )
        client.start()
        headers = {"access_token": key}
        job = None
        for _ in range(600):
            jobs = requests.get(f"{base}/v1/jobs", headers=headers, timeout=30).json()["jobs"]
            job = jobs[0] if jobs else None
            if job and job["state"] == "awaiting_review":
                break
            threading.Event().wait(0.2)
        assert job and job["state"] == "awaiting_review" and job["job_status"] == 0
        threading.Event().wait(1.0)
        assert client.is_alive() and not list(out.iterdir())  # still polling, nothing written yet
        r = requests.post(
            f"{base}/v1/render_job/{job['job_id']}",
            headers=headers,
            timeout=30,
            json={"model_config": {"style": "solid"}},
        )
        assert r.status_code == 202, r.text
        client.join(timeout=300)
        assert not client.is_alive()
        [written] = list(out.iterdir())
        output, source = _pixels(written.read_bytes()), _pixels(photo.read_bytes())
        assert output.shape == source.shape and (np.abs(output - source).max(axis=2) > 100).mean() > 0.002


def test_cancelling_a_queued_render_or_a_job_awaiting_review(client, shared_data):
    """A paid render cancelled before a worker took it: the job is completed as before, the render refunded;
    a job awaiting review cancelled: refunded whole (nothing was delivered)."""
    key = new_key(client.svc, credits=10)
    job_id = _job(client, key, (shared_data / PHOTO).read_bytes(), {"enable_lp": False})
    process_job(job_id, client.svc)
    link = _result(client, key, job_id)["tasks"][0]["download_link"]
    assert _render(client, key, job_id, {}).status_code == 202
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers={"access_token": key})
    assert r.status_code == 200 and r.json()["state"] == "completed", r.text
    assert r.json()["credits_charged"] == 1 and r.json()["tasks"][0]["download_link"]
    assert _download(client, link)  # the output is still there
    review = _job(client, key, (shared_data / PHOTO).read_bytes(), {"review": True, "enable_lp": False})
    process_job(review, client.svc)
    r = client.post(f"/v1/jobs/{review}/cancel", headers={"access_token": key})
    assert r.json()["state"] == "cancelled" and r.json()["credits_charged"] == 0
    from veil.jobs.keys import get_key

    assert get_key(client.svc.db, client.svc.get_job(job_id).key_id).credits == 9  # only the first job's cost


def test_the_panel_job_page_shows_where_to_look(tmp_path, shared_data, detection_models):
    """The per-file report on the admin panel's job page: regions per kind and the candidates just below the
    threshold, from the task's report."""
    from fastapi.testclient import TestClient

    from _service_helpers import settings_for
    from test_admin_auth import PASSWORD, _sign_in
    from veil.api.app import create_app

    app = create_app(settings_for(tmp_path, admin_email="ops@example.com", admin_password=PASSWORD))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        http.svc = app.state.service
        key = new_key(http.svc, credits=10)
        crowd = shared_data / "facemask_faces/images/test_shutterstock_289132226.jpg"
        job_id = _job(http, key, crowd.read_bytes(), {"enable_lp": False})
        process_job(job_id, http.svc)
        summary = http.svc.get_job(job_id).tasks[0].summary["faces"]
        assert summary["below_threshold"]["candidates"] > 0  # this crowd has faces just below 0.5
        assert _sign_in(http, next_page=f"/admin/jobs/{job_id}").status_code == 303
        page = http.get(f"/admin/jobs/{job_id}").text
        assert f"faces: {summary['regions']}" in page
        assert f"{summary['below_threshold']['candidates']} just below the threshold" in page
