"""Issue 18, faults never tried: each leaves every job completed once, or failed with a clear reason and the
right refund (the key's balance and ledger, not only the job's fields), nothing half-written presented as
an output, and the service serving afterwards without a restart.

- the scratch disk (a small tmpfs as `veil serve`'s data dir) fills while a video is processed, and the
  upload store fills during a block upload (Put Block, then Put Block List);
- the API server is stopped (SIGTERM) in the middle of a Put Block; the client resumes after the restart;
- PostgreSQL goes away for 10 s mid-job (a TCP proxy of this module between Veil and the shared server is
  cut: every connection closed, new ones closed at once, as when the server is down; the behaviour is the
  same as for 30 s: the worker's writes fail at once either way) and comes back; and, in-process, just after
  an output was stored and before it was recorded;
- a private Redis (nothing persisted) restarts while a Celery worker runs a job and another waits;
- a stitch of video segments fails through Veil's fault (one of its own segment files is unusable).

The scale-out ones run on the scale-out suite's parts (`test_scaleout.Deployment`: PostgreSQL, Redis,
Azurite, `veil serve` with VEIL_WORKER=celery and a `veil worker`)."""

from __future__ import annotations

import base64
import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

import seed_client
from _service_helpers import padded_jpeg, settings_for
from conftest import under_ci
from test_scaleout import PG_SERVER, Deployment, _blobs, _clip, _report, _session, _submit, _wait
from test_segments import _TINY_SEGMENTS, _video_job
from test_video import make_clip
from veil.db.session import open_database
from veil.jobs import credits
from veil.jobs.keys import create_key, get_key
from veil.storage.testing import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
HEAVY = {"blur_face": True, "enable_lp": True, "slicing": True}  # ~10 s for the whole test video: time to cut
MiB = 1024 * 1024


class _Books:
    """The deployment's database as the tests read it: keys, balances and ledgers."""

    def __init__(self, db, engine=None) -> None:
        self.db, self.engine = db, engine

    @classmethod
    def open(cls, url: str) -> _Books:
        engine, db = open_database(url)
        return cls(db, engine)

    def key(self, amount: int) -> tuple[str, str]:
        token, row = create_key(self.db, amount)
        return token, row.id

    def balance(self, key_id: str) -> int:
        return get_key(self.db, key_id).credits

    def entries(self, job_id: str) -> list[tuple[str, int]]:
        return [(e.kind, e.amount) for e in credits.ledger(self.db, job_id=job_id)]

    def charged_once(self, key_id: str, start: int, report: dict) -> None:
        cost = report["job_total_credit_cost"]
        assert report["job_status"] == 100 and cost >= 1, report
        assert report["credits_charged"] == cost and report["credits_refunded"] == 0, report
        assert self.entries(report["job_id"]) == [("reserve", -cost)]
        assert self.balance(key_id) == start - cost

    def refunded(self, key_id: str, start: int, report: dict) -> None:
        cost = report["job_total_credit_cost"]
        assert report["job_status"] == 200 and report["state"] == "failed" and cost >= 1, report
        assert report["credits_charged"] == 0 and report["credits_refunded"] == cost, report
        assert self.entries(report["job_id"]) == [("reserve", -cost), ("refund", cost)]
        assert self.balance(key_id) == start
        assert all(t["download_link"] is None for t in report["tasks"])

    def recorded(self, job_id: str) -> set[str]:
        """The blobs the job's tasks name: their outputs, and their detections documents where kept."""
        from veil.db.models import Task

        with self.db() as session:
            tasks = list(session.scalars(select(Task).where(Task.job_id == job_id)))
        return {blob for t in tasks for blob in (t.output_blob, getattr(t, "detections_blob", None)) if blob}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def _create(dep: Deployment, token: str, name: str, size: int, config: dict) -> tuple[str, str]:
    """create_upload_session: (session_uri, job_id)."""
    r = requests.post(
        f"{dep.api_url}/create_upload_session",
        headers={"access_token": token},
        timeout=30,
        json={
            "file_name": name,
            "file_size": size,
            "content_type": "octet-stream",
            "model": "blur",
            "model_config": config,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["session_uri"], r.json()["job_id"]


def _approve(dep: Deployment, token: str, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while (
        status := requests.post(
            f"{dep.api_url}/approve_job/{job_id}", headers={"access_token": token}, timeout=30
        ).status_code
    ) == 302:
        assert time.monotonic() < deadline, "the upload was never priced"
        time.sleep(0.2)
    assert status == 200, status


def _block_id(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(4, "big")).decode()


def _commit(uri: str, blocks: int) -> requests.Response:
    xml = "<BlockList>" + "".join(f"<Latest>{_block_id(n)}</Latest>" for n in range(blocks)) + "</BlockList>"
    return requests.put(uri + "&comp=blocklist", data=xml, timeout=60)


def _put_block(uri: str, n: int, body) -> requests.Response:
    return requests.put(uri + "&comp=block&blockid=" + _block_id(n), data=body, timeout=60)


# ----------------------------------------------------------------------------------- a full disk
class _Local(Deployment):
    """`veil serve` (embedded worker, local blob store) whose data dir is a small tmpfs; SQLite beside it."""

    @property
    def data(self) -> Path:
        return self.root / "api"

    def free(self) -> int:
        stat = os.statvfs(self.data)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int) -> Path:
        """A filler file leaving about `leave` bytes free."""
        filler = self.data / "filler"
        with filler.open("wb") as out:
            out.truncate(0)
            out.write(b"\0" * max(self.free() - leave, 0))
        return filler

    def leftovers(self) -> list[str]:
        """Half-written files: bodies being received, scratch files of jobs."""
        work = self.data / "work"
        temps = [p.name for p in (self.data / "blobs").rglob("tmp-*")]
        return temps + ([p.name for p in work.iterdir()] if work.is_dir() else [])

    def outputs(self) -> list[str]:
        from veil.storage.local import LocalBlobStore

        return LocalBlobStore(self.data / "blobs", "x", b"k", "http://x").list("outputs")


@pytest.fixture(scope="module")
def local(tmp_path_factory, detection_models) -> Iterator[tuple[_Local, _Books]]:
    if os.geteuid() != 0:
        if under_ci():
            pytest.fail("the full-disk tests mount a tmpfs and must run as root under CI")
        pytest.skip("mounting a small tmpfs as the data dir needs root")
    root = tmp_path_factory.mktemp("faults-local")
    (root / "api").mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(root / "api")], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs as the data dir: {mounted.stderr.strip()}")  # under CI a failure
    database = f"sqlite:///{root / 'api' / 'veil.db'}"  # the default layout: the database on the full disk too
    env = {**os.environ, "VEIL_DATABASE_URL": database, "VEIL_WORKER": "embedded", "VEIL_STORAGE_BACKEND": "local"}
    dep = _Local(root, env, free_port())
    books = None
    try:
        dep.start_api()
        books = _Books.open(database)
        yield dep, books
    finally:
        dep.close()
        if books is not None:
            books.close()
        subprocess.run(["umount", "-l", str(root / "api")], check=False)


def test_scratch_disk_fills_while_a_video_is_processed(local, shared_data, tmp_path):
    """The disk (data dir: scratch, blobs and the SQLite database, the default layout) fills while the engine
    writes the anonymized video: the job fails naming the full disk, the key gets its credits back, no output
    is stored, the scratch files are gone, and the next job completes."""
    dep, books = local
    token, key_id = books.key(100)
    clip = _clip(shared_data, tmp_path / "clip.mp4", frames=10_000, width=768)  # ~0.5 MB out
    uri, job_id = _session(dep, token, clip)
    seed_client.upload_file(session_uri=uri, file_name=str(clip))
    _wait(dep, token, job_id, lambda r: r["state"] == "awaiting_approval", 60)
    filler = dep.fill(leave=clip.stat().st_size + 64 * 1024)  # the input's copy fits, its output does not
    try:
        _approve(dep, token, job_id)
        report = _wait(dep, token, job_id, lambda r: r["job_status"] in (100, 200), 120)
    finally:
        filler.unlink()
    books.refunded(key_id, 100, report)
    reason = report["job_status_description"]  # the encoder's write or the database's, whichever failed first
    assert "internal error" in reason and ("No space left on device" in reason or "disk is full" in reason), report
    assert "\n" not in reason and "sqlalche.me" not in reason and str(dep.data) not in reason, reason
    assert dep.outputs() == [] and dep.leftovers() == []

    again = _submit(dep, token, clip)
    report = _wait(dep, token, again, lambda r: r["job_status"] in (100, 200), 120)
    books.charged_once(key_id, 100, report)
    assert dep.outputs() != [] and dep.leftovers() == []


def test_the_upload_store_fills_during_an_upload(local):
    """Put Block and then Put Block List meet a full store: each answers 503 ServerBusy naming it (nothing
    half-written kept, the job still waits for its upload); once there is room the client sends the refused
    block again, commits, and the job completes."""
    dep, books = local
    token, key_id = books.key(100)
    data = padded_jpeg(3 * MiB)
    uri, job_id = _create(dep, token, "big.jpg", len(data), {"blur_face": True})
    blocks = [data[n : n + MiB] for n in range(0, len(data), MiB)]

    def refused(response: requests.Response) -> None:
        assert response.status_code == 503, response.text
        assert response.headers["x-ms-error-code"] == "ServerBusy" and "space" in response.text
        assert dep.leftovers() == [] and _report(dep, token, job_id)["state"] == "created"

    assert _put_block(uri, 0, blocks[0]).status_code == 201
    filler = dep.fill(leave=MiB // 2)
    try:
        refused(_put_block(uri, 1, blocks[1]))
    finally:
        filler.unlink()
    for n in (1, 2):
        assert _put_block(uri, n, blocks[n]).status_code == 201
    filler = dep.fill(leave=MiB)  # the staged blocks fit; the committed copy of them does not
    try:
        refused(_commit(uri, len(blocks)))
    finally:
        filler.unlink()
    assert _commit(uri, len(blocks)).status_code == 201
    _approve(dep, token, job_id)
    report = _wait(dep, token, job_id, lambda r: r["job_status"] in (100, 200), 120)
    books.charged_once(key_id, 100, report)
    assert dep.leftovers() == []


def test_sigterm_during_an_upload_then_the_client_resumes(local):
    """SIGTERM while a Put Block body is half sent: the server finishes that request (or fails it cleanly),
    exits, keeps no half block; after the restart the client sends what was not acknowledged, commits with
    Put Block List and the job completes."""
    dep, books = local
    token, key_id = books.key(100)
    data = padded_jpeg(3 * MiB)
    uri, job_id = _create(dep, token, "resumed.jpg", len(data), {"blur_face": True})
    blocks = [data[n : n + MiB] for n in range(0, len(data), MiB)]
    assert _put_block(uri, 0, blocks[0]).status_code == 201
    logged = len(dep.log("api"))
    half_sent, signalled, outcome = threading.Event(), threading.Event(), {}

    def client() -> None:  # one Put Block whose body stops halfway until the server got its SIGTERM
        url = urlsplit(uri + "&comp=block&blockid=" + _block_id(1))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.putrequest("PUT", f"{url.path}?{url.query}")
            conn.putheader("Content-Length", str(MiB))
            conn.endheaders()
            conn.send(blocks[1][: MiB // 2])
            half_sent.set()
            signalled.wait(30)
            time.sleep(0.5)
            conn.send(blocks[1][MiB // 2 :])
            outcome["status"] = conn.getresponse().status
        except OSError as exc:  # the connection closed under it: a clean failure
            outcome["error"] = exc
        finally:
            conn.close()

    sender = threading.Thread(target=client)
    sender.start()
    assert half_sent.wait(30)
    proc = dep.procs.pop("api")
    os.killpg(proc.pid, signal.SIGTERM)
    signalled.set()
    sender.join(60)
    assert proc.wait(60) in (0, -signal.SIGTERM) and "Application shutdown complete" in dep.log("api")
    assert outcome.get("status") in (201, None) and ("status" in outcome) != ("error" in outcome), outcome
    assert dep.leftovers() == [] and "Traceback" not in dep.log("api")[logged:]

    dep.start_api()
    for n in ([] if outcome.get("status") == 201 else [1]) + [2]:  # the blocks not acknowledged
        assert _put_block(uri, n, blocks[n]).status_code == 201
    assert _commit(uri, len(blocks)).status_code == 201
    _approve(dep, token, job_id)
    report = _wait(dep, token, job_id, lambda r: r["job_status"] in (100, 200), 120)
    books.charged_once(key_id, 100, report)
    with requests.get(report["tasks"][0]["download_link"], timeout=60) as r:
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"


# ----------------------------------------------------------------------------------- a stitch that fails
def test_a_stitch_that_fails_through_veils_fault_is_refunded(tmp_path, shared_data, detection_models, monkeypatch):
    """The segments are anonymized (worker processes of their own), then one of Veil's own segment files is
    unusable when they are joined (here: another segment's file stored in its place, as a worker mixing up
    its files would): the real stitch refuses it. That is not the input's fault: refunded, no output."""
    from veil.jobs import segments
    from veil.jobs.runner import process_job
    from veil.jobs.service import OUTPUT_CONTAINER, build_service

    real_stitch = segments.stitch

    def stitch_with_a_damaged_part(src, parts, dst, config, limits=None, *args, **kwargs):
        assert len(parts) >= 2
        shutil.copyfile(parts[0], parts[1])
        return real_stitch(src, parts, dst, config, limits, *args, **kwargs)

    monkeypatch.setattr(segments, "stitch", stitch_with_a_damaged_part)
    svc = build_service(
        settings_for(tmp_path / "data", worker_concurrency=2, video_segment_seconds=1.5, **_TINY_SEGMENTS)
    )
    try:
        job_id = _video_job(svc, make_clip(tmp_path / "long.mp4", frames=150, vfr=True, audio=True).read_bytes())
        assert process_job(job_id, svc)
        job = svc.get_job(job_id)
        report = svc.report(job)
        _Books(svc.db).refunded(job.key_id, 100, report)
        assert "internal error" in report["job_status_description"], report
        assert svc.store.list(OUTPUT_CONTAINER) == []
    finally:
        svc.close()


# ----------------------------------------------------------------------------------- PostgreSQL and Redis
class _TcpProxy:
    """A loopback TCP proxy to `target`, cut at will: `cut()` closes every connection and closes new ones as
    soon as they are accepted (as a stopped server would), `restore()` forwards again. At most `limit`
    connections at once (more are closed)."""

    def __init__(self, target: tuple[str, int], limit: int = 64) -> None:
        self.target, self.limit = target, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                full = len(self._pairs) >= self.limit
            if self._down.is_set() or full:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for a, b in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(a, b, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._drop(pair)

    def _drop(self, pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        self._down.set()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def restore(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


class _PrivateRedis:
    """`redis-server` on a free loopback port for this module alone, nothing persisted."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # nothing persisted: every message and unacked entry is gone
            self.proc.wait(10)


@contextmanager
def _postgresql_behind_a_proxy() -> Iterator[tuple[str, str, _TcpProxy]]:
    """A schema of its own on the shared PostgreSQL server (not `veil_t_…`, which a PostgreSQL run of the suite
    drops when its session ends) and a proxy to the server: (direct URL, URL through the proxy, proxy)."""
    from sqlalchemy import create_engine, text

    schema = f"veil_faults_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(
            PG_SERVER.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    direct = f"{PG_SERVER}{'&' if '?' in PG_SERVER else '?'}options=-csearch_path%3D{schema}"
    server = urlsplit(PG_SERVER)
    proxy = _TcpProxy((server.hostname, server.port or 5432))
    try:
        yield direct, direct.replace(f"@{server.netloc.split('@')[-1]}/", f"@127.0.0.1:{proxy.port}/", 1), proxy
    finally:
        proxy.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, detection_models, shared_data, azurite_connection_string):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    root = tmp_path_factory.mktemp("faults-scaled")
    with _postgresql_behind_a_proxy() as (direct, proxied, proxy):
        broker, books = _PrivateRedis(root), _Books.open(direct)
        env = {
            **os.environ,
            "VEIL_DATABASE_URL": proxied,
            "VEIL_STORAGE_BACKEND": "azure",
            "VEIL_AZURE_CONNECTION_STRING": azurite_connection_string,
            "VEIL_WORKER": "celery",
            "VEIL_CELERY_BROKER_URL": broker.url,
            "VEIL_JOB_LEASE_SECONDS": "9",
            "VEIL_SWEEP_SECONDS": "1",
            "VEIL_UPLOAD_POLL_SECONDS": "0.5",
            "VEIL_REDISPATCH_SECONDS": "20",
        }
        env.pop("VEIL_CALLBACK_SECRET", None)
        dep = Deployment(root, env, free_port())
        try:
            broker.start()
            dep.start_api()
            dep.start_worker("worker-1")
            yield dep, proxy, broker, books
        finally:
            dep.close()
            broker.stop()
            books.close()


def _submit_heavy(dep: Deployment, token: str, clip: Path) -> str:
    """A video with every detector and slicing on: long enough to be interrupted."""
    uri, job_id = _create(dep, token, clip.name, clip.stat().st_size, HEAVY)
    seed_client.upload_file(session_uri=uri, file_name=str(clip))
    _approve(dep, token, job_id)
    return job_id


def _files_done(dep: Deployment, job_id: str) -> int:
    return dep.log("worker-1").count(f"job {job_id}: file 0 done")


DATABASE_CUT_S = 30


def test_postgresql_goes_away_mid_job_and_comes_back(scaled, shared_data, tmp_path):
    """Every connection of the API server and the worker to PostgreSQL is cut for 30 s (the issue's figure,
    over three times the job's lease, so the lease runs out while the database is away and the job is taken
    again once it is back) while the worker runs a video: the job completes once (one output, charged once),
    and both serve a new job afterwards."""
    dep, proxy, _, books = scaled
    assert DATABASE_CUT_S > 3 * int(dep.env["VEIL_JOB_LEASE_SECONDS"])
    token, key_id = books.key(1000)
    job_id = _submit_heavy(dep, token, _clip(shared_data, tmp_path / "full.mp4", frames=10_000, width=768))
    _wait(dep, token, job_id, lambda r: 10 <= r["job_status"] < 100, 120)  # in the engine
    proxy.cut()
    try:
        time.sleep(DATABASE_CUT_S)
    finally:
        proxy.restore()
    books.charged_once(key_id, 1000, _wait(dep, token, job_id, lambda r: r["job_status"] in (100, 200), 240))
    assert _files_done(dep, job_id) == 1 and set(_blobs(dep, job_id)) == books.recorded(job_id)
    assert dep.log("worker-1").count(f"job {job_id}: started by") == 2  # the cut stopped the first run
    requeued = f"job {job_id}: its worker stopped renewing the lease; queued again"
    assert requeued in dep.log("api") + dep.log("worker-1")  # its lease ran out: taken again, not a new job
    token, key_id = books.key(100)
    after = _submit(dep, token, _clip(shared_data, tmp_path / "short.mp4", frames=25))
    books.charged_once(key_id, 100, _wait(dep, token, after, lambda r: r["job_status"] in (100, 200), 120))


def test_postgresql_lost_just_after_an_output_was_stored_leaves_no_stray_output(tmp_path, monkeypatch):
    """The output is stored, then the database goes away before the task is marked completed: that run stops,
    nothing recorded (whether its output was recorded is unknown to it, so it cannot delete it), and the run that
    takes the job after its lease ran out deletes that stray output and completes the job with the only output
    in the store, charged once."""
    from veil.jobs.runner import process_job
    from veil.jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, build_service

    with _postgresql_behind_a_proxy() as (_, proxied, proxy):
        svc = build_service(settings_for(tmp_path / "data", database_url=proxied, job_lease_seconds=3))
        try:
            books = _Books(svc.db)
            token, key_id = books.key(100)
            data = padded_jpeg(20_000)
            job = svc.create_job(key_id, "photo.jpg", len(data)).job
            svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
            svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
            while svc.approve(key_id, job.id) == "waiting":
                time.sleep(0.1)
            write, cuts = svc.store.write, []

            def write_then_lose_the_database(container, name, src):
                size = write(container, name, src)
                if container == OUTPUT_CONTAINER and not cuts:
                    cuts.append(name)
                    proxy.cut()
                return size

            monkeypatch.setattr(svc.store, "write", write_then_lose_the_database)
            try:
                process_job(job.id, svc)
            except Exception:  # noqa: BLE001 - the failure could not be recorded either (the worker loop logs it)
                pass
            proxy.restore()
            assert cuts and svc.get_job(job.id).status == "running"
            deadline = time.monotonic() + 30
            while svc.leases.sweep()[0] != [job.id]:  # its lease runs out: queued again
                assert time.monotonic() < deadline
                time.sleep(0.5)
            assert process_job(job.id, svc)
            report = svc.report(svc.get_job(job.id))
            books.charged_once(key_id, 100, report)
            assert set(svc.store.list(OUTPUT_CONTAINER)) == books.recorded(job.id)  # no stray blob
        finally:
            svc.close()


def test_redis_restarts_mid_job(scaled, shared_data, tmp_path):
    """The broker loses every message (the running job's and the next one's, still queued): the running job
    completes once, the queued one is sent again and completes once, and a job approved afterwards runs."""
    dep, _, broker, books = scaled
    (t1, k1), (t2, k2), (t3, k3) = books.key(1000), books.key(100), books.key(100)
    short = _clip(shared_data, tmp_path / "short.mp4", frames=25)
    uri, waiting = _create(dep, t2, short.name, short.stat().st_size, {"blur_face": True})
    seed_client.upload_file(session_uri=uri, file_name=str(short))
    _wait(dep, t2, waiting, lambda r: r["state"] == "awaiting_approval", 60)
    running = _submit_heavy(dep, t1, _clip(shared_data, tmp_path / "full.mp4", frames=10_000, width=768))
    _wait(dep, t1, running, lambda r: 10 <= r["job_status"] < 100, 120)  # in the engine
    _approve(dep, t2, waiting)  # its message waits in Redis behind the running job (one worker thread)
    broker.stop()
    assert _report(dep, t1, running)["job_status"] < 100  # the broker went away in the middle of the job
    time.sleep(2)
    broker.start()
    for token, key_id, job_id, credit in ((t1, k1, running, 1000), (t2, k2, waiting, 100)):
        books.charged_once(key_id, credit, _wait(dep, token, job_id, lambda r: r["job_status"] in (100, 200), 240))
        assert _files_done(dep, job_id) == 1 and set(_blobs(dep, job_id)) == books.recorded(job_id)
    after = _submit(dep, t3, _clip(shared_data, tmp_path / "after.mp4", frames=30))
    books.charged_once(k3, 100, _wait(dep, t3, after, lambda r: r["job_status"] in (100, 200), 120))
