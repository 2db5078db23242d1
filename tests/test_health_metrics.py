"""Issue 22 item 7: `/healthz`, `/readyz` (503 naming the part that does not answer), Prometheus `/metrics`
(scraped while a real job runs: its state change, frames processed, credits), JSON-lines logs with the job
id and key id as fields."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from _live_server import veil_command, veil_server
from _service_helpers import app_client, jpeg_bytes, new_key, seed_upload
from test_scaleout import PG_SERVER
from test_video import make_clip


def _scrape(http) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait(until, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_healthz_and_readyz_answer_when_every_part_works(tmp_path, detection_models):
    with app_client(tmp_path) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        r = http.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["failing"] == []
        assert set(body["checks"]) == {"database", "store", "models"} and all(c["ok"] for c in body["checks"].values())


@pytest.fixture()
def own_database():
    """A PostgreSQL database of the test's own, and a switch that makes the server refuse it (existing
    connections ended, new ones refused) as an unreachable database would be; dropped afterwards."""
    import psycopg

    name = f"veil_readyz_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")  # under CI a failure (conftest.py)
    admin.execute(f'CREATE DATABASE "{name}"')

    def refuse(refused: bool = True) -> None:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refused else "true"}')
        if refused:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    try:
        yield f"{PG_SERVER.rsplit('/', 1)[0]}/{name}", refuse
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_readyz_names_an_unreachable_database_with_503(tmp_path, detection_models, own_database):
    url, refuse = own_database
    with app_client(tmp_path, database_url=url) as http:
        assert http.get("/readyz").status_code == 200
        refuse()
        r = http.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not ready" and body["failing"] == ["database"], body
        assert not body["checks"]["database"]["ok"] and body["checks"]["database"]["detail"]
        assert body["checks"]["store"]["ok"] and body["checks"]["models"]["ok"]
        assert http.get("/healthz").status_code == 200  # alive, only not ready
        assert _value(_scrape(http), "veil_database_up") == 0  # /metrics still answers, saying so
        refuse(False)
        _wait(lambda: http.get("/readyz").status_code == 200, 30)


def test_readyz_names_an_unreachable_broker_with_503(tmp_path, detection_models):
    """With VEIL_WORKER=celery the broker is part of readiness: one that does not answer (nothing listens on
    the port) is named, the other parts still reported as they are."""
    from _live_server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    with app_client(tmp_path, worker="celery", celery_broker_url=dead) as http:
        r = http.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["failing"] == ["broker"], body
        assert body["checks"]["database"]["ok"] and body["checks"]["store"]["ok"]
        assert http.get("/healthz").status_code == 200


def hold_engine_at_half(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The real engine, held in its first file once half its frames are done: (halfway, go_on) events."""
    import veil.engine.anonymize as engine

    halfway, go_on = threading.Event(), threading.Event()
    real = engine.anonymize

    def held_at_half(src, dst, config, progress=None, **kwargs):
        def report(fraction: float) -> None:
            progress(fraction)
            if fraction >= 0.5 and not halfway.is_set():
                halfway.set()
                assert go_on.wait(60)

        return real(src, dst, config, progress=report, **kwargs)

    monkeypatch.setattr(engine, "anonymize", held_at_half)
    return halfway, go_on


def test_metrics_follow_a_running_job(tmp_path, detection_models, monkeypatch):
    """The real engine on a real clip, held mid-file (at half its frames) while /metrics is scraped."""
    frames = 60
    clip = make_clip(tmp_path / "clip.mp4", frames=frames, size=(320, 240))
    halfway, go_on = hold_engine_at_half(monkeypatch)
    with app_client(tmp_path / "data", worker="embedded", worker_poll_seconds=0.1) as http:
        key = new_key(http.svc, 100)
        data = clip.read_bytes()
        r = http.post(
            "/v1/create_upload_session",
            headers={"access_token": key},
            json={"file_name": "clip.mp4", "file_size": len(data), "model_config": {"enable_lp": False}},
        )
        job_id = r.json()["job_id"]
        seed_upload(http, r.json()["session_uri"], data)
        _wait(
            lambda: (
                http.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()["state"]
                == "awaiting_approval"
            )
        )
        before = _scrape(http)
        assert _value(before, "veil_jobs", state="awaiting_approval") == 1
        assert _value(before, "veil_credits_reserved_total") == 0
        assert _value(before, "veil_upload_bytes_total") == len(data)
        assert http.post(f"/v1/approve_job/{job_id}", headers={"access_token": key}).status_code == 200
        try:
            assert halfway.wait(120), "the job never reached half its frames"
            during = _scrape(http)
        finally:
            go_on.set()
        cost = http.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()["job_total_credit_cost"]
        assert _value(during, "veil_jobs", state="running") == 1 and _value(during, "veil_jobs", state="queued") == 0
        assert _value(during, "veil_worker_leases", kind="job", state="held") == 1
        assert _value(during, "veil_credits_reserved_total") == cost >= 1
        counted = _value(during, "veil_frames_processed_total", kind="video") - _value(
            before, "veil_frames_processed_total", kind="video"
        )
        assert frames // 2 <= counted < frames
        _wait(lambda: http.get(f"/v1/job_result/{job_id}", headers={"access_token": key}).json()["job_status"] == 100)
        after = _scrape(http)
    assert _value(after, "veil_jobs", state="running") == 0 and _value(after, "veil_jobs", state="completed") == 1
    assert (
        _value(after, "veil_frames_processed_total", kind="video")
        - _value(before, "veil_frames_processed_total", kind="video")
    ) == frames
    assert (
        _value(after, "veil_processing_seconds_count", kind="video")
        - _value(before, "veil_processing_seconds_count", kind="video")
    ) == 1
    assert _value(after, "veil_frames_per_second_count", kind="video") >= 1
    assert _value(after, "veil_credits_refunded_total") == 0


def test_metrics_token(tmp_path):
    with app_client(tmp_path, metrics_token="scrape-me") as http:
        assert http.get("/metrics").status_code == 401
        r = http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert r.status_code == 200 and "veil_jobs" in r.text


def test_every_metric_is_documented(tmp_path):
    page = (Path(__file__).parents[1] / "docs" / "scaling.md").read_text()
    documented = set(re.findall(r"^\| `(veil_[a-z_]+)`", page, re.MULTILINE))  # the metrics table's first column
    with app_client(tmp_path) as http:
        names = {
            family.name
            for family in text_string_to_metric_families(http.get("/metrics").text)
            if family.name.startswith("veil_")
        }
    assert {
        "veil_jobs",
        "veil_queue_depth",
        "veil_worker_leases",
        "veil_credits_reserved",
        "veil_credits_refunded",
        "veil_upload_bytes",
        "veil_callback_deliveries",
        "veil_frames_processed",
        "veil_processing_seconds",
        "veil_frames_per_second",
        "veil_jobs_handed_back",
        "veil_database_up",
    } <= names
    for name in names:  # the text format names a counter's family without its "_total"
        assert {name, f"{name}_total"} & documented, f"{name} is not in docs/scaling.md's Metrics table"


def test_json_log_lines_carry_the_job_id_and_the_key_id(tmp_path, detection_models):
    data = tmp_path / "data"
    env = {"VEIL_LOG_FORMAT": "json", "VEIL_WORKER_POLL_SECONDS": "0.2"}
    with veil_server(data, env) as base:
        import subprocess

        created = subprocess.run(
            [*veil_command(), "keys", "create", "--credits", "10", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        with requests.Session() as http:
            image = jpeg_bytes()
            r = http.post(
                f"{base}/v1/create_upload_session",
                headers={"access_token": key},
                timeout=30,
                json={"file_name": "a.jpg", "file_size": len(image)},
            )
            job_id = r.json()["job_id"]
            assert (
                http.put(
                    r.json()["session_uri"], data=image, headers={"x-ms-blob-type": "BlockBlob"}, timeout=30
                ).status_code
                == 201
            )
            _wait(
                lambda: (
                    http.post(
                        f"{base}/v1/approve_job/{job_id}",
                        headers={"access_token": key},
                        allow_redirects=False,
                        timeout=30,
                    ).status_code
                    == 200
                ),
                60,
            )
            _wait(
                lambda: (
                    http.get(f"{base}/v1/job_result/{job_id}", headers={"access_token": key}, timeout=30).json()[
                        "job_status"
                    ]
                    == 100
                ),
                120,
            )
    lines = [line for line in (data / "serve.log").read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every record is one JSON object on its line
    assert records and all({"time", "level", "logger", "message", "job_id", "key_id"} <= set(r) for r in records)
    with pytest.raises(StopIteration):  # key_id is the key's id, never the key itself
        next(r for r in records if key in json.dumps(r))
    started = next(r for r in records if "started by" in r["message"])
    assert started["job_id"] == job_id and started["key_id"]
    access = [r for r in records if r["logger"] == "uvicorn.access" and f"/v1/job_result/{job_id}" in r["message"]]
    assert access and all(r["key_id"] == started["key_id"] for r in access)


def test_a_worker_serves_its_own_metrics_on_its_port():
    """`veil worker` with VEIL_METRICS_PORT: this process's work figures on a port of its own (the
    deployment's figures are the API servers')."""
    from veil.metrics import serve_metrics
    from veil.storage.testing import free_port

    port = free_port()
    serve_metrics(port, host="127.0.0.1")
    names = {
        family.name
        for family in text_string_to_metric_families(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    }
    assert {"veil_frames_processed", "veil_processing_seconds", "veil_jobs_handed_back"} <= names
    assert "veil_jobs" not in names
