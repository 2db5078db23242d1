"""Issue 8 acceptance: the scaled-out deployment on real parts. PostgreSQL, Redis, Azurite, `veil serve`
with VEIL_WORKER=celery and two `veil worker` processes, each a process group of its own:

- the seed's sample client end to end through that deployment;
- four jobs at once, run by both workers;
- the API server killed and started again while a worker runs a job: the job completes;
- `kill -9` of the process group of the worker running a video: the other worker completes the job
  within two minutes of the kill, charged once, and only it produced an output;
- SIGTERM to the worker running a video (issue 22, graceful shutdown, no grace period): it hands the job
  back at once (lease released, logged) and exits; the other worker completes it, progress never falling.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import pytest
import requests

import seed_client
from _live_server import veil_command
from _service_helpers import assert_charged_once, database_url_for
from test_e2e_seed_client import FACE_IMAGE, _check_image, _labels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PG_SERVER = os.environ.get("VEIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
VIDEO = "videos/intel_car-detection.mp4"
CONFIG = {"blur_face": True, "enable_lp": False, "slicing": False}


class Deployment:
    """The processes of one deployment; each started in a process group of its own."""

    def __init__(self, root: Path, env: dict[str, str], port: int) -> None:
        self.root, self.env, self.port = root, env, port
        self.api_url = f"http://127.0.0.1:{port}/v1"
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, *args: str, ready) -> None:
        with open(self.root / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [*veil_command(), *args, "--data-dir", str(self.root / name)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        deadline = time.monotonic() + 120
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start (exit {proc.poll()}):\n{self.log(name)[-4000:]}")
            time.sleep(0.2)

    def start_api(self) -> None:
        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{self.port}/openapi.json", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        self.start("api", "serve", "--host", "127.0.0.1", "--port", str(self.port), ready=ready)

    def start_worker(self, name: str) -> None:
        self.start(name, "worker", ready=lambda: " ready." in self.log(name))

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a dying machine would
        proc.wait(10)

    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                pass

    def key(self, credits: int) -> str:
        done = subprocess.run(
            [*veil_command(), "keys", "create", "--credits", str(credits), "--data-dir", str(self.root / "admin")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, detection_models, shared_data) -> Iterator[Deployment]:
    from sqlalchemy import create_engine, text

    from veil.storage.testing import azurite, azurite_binary, free_port

    root = tmp_path_factory.mktemp("scaleout")
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).flushdb()
        database = database_url_for(root, PG_SERVER)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis and PostgreSQL unavailable: {exc}")  # under CI a failure (conftest.py)
    try:
        binary = azurite_binary(install=False)
    except RuntimeError as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    if binary is None:
        pytest.skip("Azurite unavailable: node is missing")
    with azurite(binary) as connection_string:
        env = {
            **os.environ,
            "VEIL_DATABASE_URL": database,
            "VEIL_STORAGE_BACKEND": "azure",
            "VEIL_AZURE_CONNECTION_STRING": connection_string,
            "VEIL_WORKER": "celery",
            "VEIL_CELERY_BROKER_URL": REDIS_URL,
            "VEIL_JOB_LEASE_SECONDS": "15",
            "VEIL_SWEEP_SECONDS": "1",
            "VEIL_UPLOAD_POLL_SECONDS": "0.5",
            "VEIL_SHUTDOWN_GRACE_SECONDS": "0",
        }
        env.pop("VEIL_CALLBACK_SECRET", None)
        deployment = Deployment(root, env, free_port())
        try:
            deployment.start_api()
            deployment.start_worker("worker-1")
            deployment.start_worker("worker-2")
            yield deployment
        finally:
            deployment.close()
            engine = create_engine(PG_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
            with engine.begin() as conn:
                schema = re.search(r"search_path%3D(\w+)", database).group(1)
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()


def _clip(shared_data: Path, dst: Path, frames: int, width: int = 640, loop: bool = False) -> Path:
    """The first `frames` frames of the test video (all of it if shorter; with `loop`, played again until
    there are `frames`), scaled to `width`, 25 fps H.264."""
    if dst.exists():
        return dst
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.pix_fmt = "yuv420p"
        written, passes = 0, 0
        while written < frames and (loop or not passes):
            passes += 1
            with av.open(str(shared_data / VIDEO)) as inp:
                src = inp.streams.video[0]
                if not written:  # sized once, before the encoder opens
                    stream.width, stream.height = width, round(src.height * width / src.width / 2) * 2
                for frame in inp.decode(src):
                    if written >= frames:
                        break
                    frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                    frame.pts = None
                    if loop:  # a second pass needs its timestamps given
                        frame.pts, frame.time_base = written, Fraction(1, 25)
                    out.mux(stream.encode(frame))
                    written += 1
        out.mux(stream.encode())
    return dst


def _submit(dep: Deployment, key: str, path: Path) -> str:
    """The seed client's calls: session, block upload, approve until 200."""
    upload_url, job_id = _session(dep, key, path)
    seed_client.upload_file(session_uri=upload_url, file_name=str(path))
    deadline = time.monotonic() + 60
    while (
        r := requests.post(
            f"{dep.api_url}/approve_job/{job_id}", headers={"access_token": key}, allow_redirects=False, timeout=30
        )
    ).status_code == 302:
        assert time.monotonic() < deadline, "the upload was never seen"
        time.sleep(0.2)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n--- api\n{dep.log('api')[-3000:]}"
    return job_id


def _session(dep: Deployment, key: str, path: Path) -> tuple[str, str]:
    r = requests.post(
        f"{dep.api_url}/create_upload_session",
        headers={"access_token": key},
        timeout=30,
        json={
            "file_name": path.name,
            "file_size": path.stat().st_size,
            "content_type": "octet-stream",
            "model": "blur",
            "model_config": CONFIG,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["session_uri"], r.json()["job_id"]


def _report(dep: Deployment, key: str, job_id: str) -> dict:
    r = requests.get(f"{dep.api_url}/job_result/{job_id}", headers={"access_token": key}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(dep: Deployment, key: str, job_id: str, until, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while not until(report := _report(dep, key, job_id)):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{dep.log(n)[-3000:]}" for n in ("api", "worker-1", "worker-2"))
            pytest.fail(f"job {job_id} stuck at {report['state']} {report['job_status']}:\n{logs}")
        time.sleep(0.2)
    return report


def _runner(dep: Deployment, job_id: str, since: dict[str, int] | None = None) -> str:
    """The worker whose log says it started the job most recently, by the time the line carries (offsets in
    two logs say nothing about which came first); only lines after `since` (log lengths) count. The line may
    reach the file a moment after the job's progress reaches the database."""
    deadline = time.monotonic() + 15
    while True:
        starts = {}
        for name in ("worker-1", "worker-2"):
            lines = [
                line
                for line in dep.log(name)[(since or {}).get(name, 0) :].splitlines()
                if f"job {job_id}: started by" in line
            ]
            if lines:
                starts[name] = lines[-1][:23]  # "2026-12-07 17:33:46,364"
        if starts or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert starts, f"no worker started {job_id}"
    return max(starts, key=lambda name: starts[name])


def _both_workers(dep: Deployment) -> None:
    """Start again a worker an earlier test killed or stopped: the next test needs a survivor."""
    for name in ("worker-1", "worker-2"):
        if name not in dep.procs:
            dep.start_worker(name)


def _producers(dep: Deployment, job_id: str) -> list[str]:
    return [n for n in ("worker-1", "worker-2") if f"job {job_id}: file 0 done" in dep.log(n)]


def _blobs(dep: Deployment, job_id: str) -> list[str]:
    """Everything stored for the job in the output container: outputs and detections documents."""
    from veil.storage.azure import AzureBlobStore

    return AzureBlobStore(dep.env["VEIL_AZURE_CONNECTION_STRING"]).list("outputs", f"{job_id}/")


def _outputs(dep: Deployment, job_id: str) -> list[str]:
    return [name for name in _blobs(dep, job_id) if not name.endswith(".detections.gz")]  # anonymized files


def test_seed_client_end_to_end(deployment, shared_data, tmp_path, monkeypatch):
    key = deployment.key(100)
    monkeypatch.setattr(seed_client, "API_URL", deployment.api_url)
    monkeypatch.setattr(seed_client, "SLEEP_SECONDS", 0.5)
    monkeypatch.chdir(tmp_path)
    image = shared_data / FACE_IMAGE[0] / FACE_IMAGE[1]
    seed_client.process_file(file_name=str(image), api_key=key, model_config={"blur_face": True})
    (output,) = [p for p in tmp_path.iterdir() if p.is_file()]
    assert output.name == "dlib_2008_001322_anonymized.jpg"
    _check_image(image, output, _labels(shared_data, *FACE_IMAGE))  # the labelled faces blurred, little else


def test_four_jobs_at_once_run_on_both_workers(deployment, shared_data, tmp_path):
    key = deployment.key(100)
    clips = [_clip(shared_data, tmp_path / f"clip{n}.mp4", frames=50 + n) for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        job_ids = list(pool.map(lambda clip: _submit(deployment, key, clip), clips))
    for job_id in job_ids:
        report = _wait(deployment, key, job_id, lambda r: r["job_status"] in (100, 200), 300)
        assert report["job_status"] == 100, report
        assert len(_producers(deployment, job_id)) == 1 and len(_outputs(deployment, job_id)) == 1
    assert {_runner(deployment, job_id) for job_id in job_ids} == {"worker-1", "worker-2"}


def test_api_restart_mid_job(deployment, shared_data, tmp_path):
    key = deployment.key(100)
    job_id = _submit(deployment, key, _clip(shared_data, tmp_path / "clip.mp4", frames=100))
    _wait(deployment, key, job_id, lambda r: r["state"] == "running", 120)
    deployment.kill("api")
    deployment.start_api()
    report = _wait(deployment, key, job_id, lambda r: r["job_status"] in (100, 200), 300)
    assert report["job_status"] == 100, report
    assert report["credits_charged"] == report["job_total_credit_cost"] and report["credits_refunded"] == 0
    assert_charged_once(deployment.env["VEIL_DATABASE_URL"], job_id, 100)
    assert len(_producers(deployment, job_id)) == 1 and len(_outputs(deployment, job_id)) == 1
    with requests.get(report["tasks"][0]["download_link"], timeout=60) as r:
        assert r.status_code == 200 and len(r.content) > 1000


def test_kill_9_of_a_worker_mid_video(deployment, shared_data, tmp_path):
    credits = 100
    key = deployment.key(credits)
    clip = _clip(shared_data, tmp_path / "long.mp4", frames=200)
    job_id = _submit(deployment, key, clip)
    _wait(deployment, key, job_id, lambda r: 0 < r["job_status"] < 100, 180)
    victim = _runner(deployment, job_id)
    survivor = ({"worker-1", "worker-2"} - {victim}).pop()
    deployment.kill(victim)
    report = _wait(deployment, key, job_id, lambda r: r["job_status"] in (100, 200), 120)  # fails after 2 min
    assert report["job_status"] == 100, report
    assert report["credits_charged"] == report["job_total_credit_cost"] >= 1 and report["credits_refunded"] == 0
    assert_charged_once(deployment.env["VEIL_DATABASE_URL"], job_id, credits)
    assert _producers(deployment, job_id) == [survivor] and len(_outputs(deployment, job_id)) == 1
    assert f"job {job_id}: started by" in deployment.log(survivor)
    out = tmp_path / "out.mp4"
    with requests.get(report["tasks"][0]["download_link"], timeout=60) as r:
        out.write_bytes(r.content)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 200


def test_sigterm_to_a_worker_mid_video_hands_the_job_to_the_other(deployment, shared_data, tmp_path):
    from veil.db.models import Job
    from veil.db.session import open_database

    _both_workers(deployment)
    key = deployment.key(100)
    job_id = _submit(deployment, key, _clip(shared_data, tmp_path / "long.mp4", frames=1500, width=768, loop=True))
    seen: list[int] = []
    _wait(deployment, key, job_id, lambda r: seen.append(r["job_status"]) or r["job_status"] > 0, 180)
    assert seen[-1] < 100, "finished before it could be interrupted; use a longer clip"
    victim = _runner(deployment, job_id)
    survivor = ({"worker-1", "worker-2"} - {victim}).pop()
    proc = deployment.procs.pop(victim)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(120)  # Celery's warm shutdown: the task hands the job back after the grace period and returns
    assert f"job {job_id}: handed back at shutdown" in deployment.log(victim), deployment.log(victim)[-3000:]
    engine, db = open_database(deployment.env["VEIL_DATABASE_URL"])
    try:
        with db() as session:  # released at once: never the stopped worker's lease again
            assert f":{proc.pid}:" not in (session.get(Job, job_id).lease_owner or "")
    finally:
        engine.dispose()
    report = _wait(
        deployment, key, job_id, lambda r: seen.append(r["job_status"]) or r["job_status"] in (100, 200), 300
    )
    try:
        assert report["job_status"] == 100, report
        assert seen == sorted(seen), seen  # progress never moved backwards
        assert f"job {job_id}: started by" in deployment.log(survivor)
        assert _producers(deployment, job_id) == [survivor]
        assert len([o for o in _outputs(deployment, job_id) if o.endswith(".mp4")]) == 1  # the survivor's only
        assert_charged_once(deployment.env["VEIL_DATABASE_URL"], job_id, 100)
    finally:
        deployment.start_worker(victim)  # the suite's two workers again


def test_kill_9_of_a_worker_mid_render(deployment, shared_data, tmp_path):
    """A render job (POST /v1/render_job) runs on a Celery worker under a lease like any job: `kill -9` of the
    worker drawing it, and the other worker completes the render; the render is charged once, the job's
    previous output stays downloadable until the new one replaces it, one output remains."""
    from veil.db.session import open_database
    from veil.jobs.credits import ledger

    _both_workers(deployment)
    key = deployment.key(100)
    job_id = _submit(deployment, key, _clip(shared_data, tmp_path / "render.mp4", frames=400, width=960))
    done = _wait(deployment, key, job_id, lambda r: r["job_status"] in (100, 200), 300)
    assert done["job_status"] == 100 and done["tasks"][0]["detections_link"], done
    first_link = done["tasks"][0]["download_link"]
    before_render = {name: len(deployment.log(name)) for name in ("worker-1", "worker-2")}
    r = requests.post(
        f"{deployment.api_url}/render_job/{job_id}",
        headers={"access_token": key},
        timeout=30,
        json={"model_config": {"style": "pixelate"}},
    )
    assert r.status_code == 202, r.text
    _wait(deployment, key, job_id, lambda r: 0 < r["job_status"] < 100, 120)
    with requests.get(first_link, timeout=60) as old:
        assert old.status_code == 200  # the previous output while the render runs
    victim = _runner(deployment, job_id, since=before_render)  # the render's worker, not the first run's
    survivor = "worker-2" if victim == "worker-1" else "worker-1"
    seen = len(deployment.log(survivor))
    deployment.kill(victim)
    report = _wait(deployment, key, job_id, lambda r: r["job_status"] in (100, 200), 180)
    assert report["job_status"] == 100, report
    # the render was cut off by the kill: the survivor took it up afterwards (a render finished before the kill
    # would not be started again)
    assert f"job {job_id}: started by" in deployment.log(survivor)[seen:], deployment.log(survivor)[seen:][-2000:]
    assert report["tasks"][0]["download_link"] != first_link and len(_outputs(deployment, job_id)) == 1
    engine, db = open_database(deployment.env["VEIL_DATABASE_URL"])
    try:
        with db() as session:
            from veil.db.models import Job

            key_id = session.get(Job, job_id).key_id
        entries = [(e.kind, e.amount) for e in ledger(db, key_id=key_id) if e.job_id == job_id]
    finally:
        engine.dispose()
    cost = report["job_total_credit_cost"]
    assert entries == [("reserve", -cost), ("reserve", -max(1, -(-cost // 5)))], entries  # job, render: once each
