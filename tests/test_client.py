"""Issue 27: the client library and `veil submit` against a real `veil serve` on loopback, every request
through a proxy (tests/_client_proxy.py) that counts what the server received and can inject faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from _client_proxy import Proxy
from _live_server import veil_command, veil_server
from _service_helpers import jpeg_bytes, padded_jpeg
from test_video import make_clip
from veil_client import Client, ClientError, JobFailed, KeyRefused, Unreachable, walk
from veil_client._http import Http
from veil_client.transfer import Journal

pytestmark = [pytest.mark.timeout(600)]


class Live:
    def __init__(self, proxy: Proxy, data: Path, db) -> None:
        self.proxy, self.data, self.db = proxy, data, db
        self.api = f"{proxy.url}/v1"

    def key(self, credits: int) -> str:
        from veil.jobs.keys import create_key

        return create_key(self.db, credits, "client test")[0]

    def balance(self, key: str) -> int:
        from veil.jobs.keys import find_key

        return find_key(self.db, key).credits

    def jobs(self, key: str) -> list[dict]:
        r = requests.get(f"{self.api}/jobs?limit=500", headers={"access_token": key}, timeout=30)
        r.raise_for_status()
        return r.json()["jobs"]

    def submit(self, key: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
        """`veil submit ... --server <proxy>` with the key in VEIL_API_KEY (never on the command line)."""
        command = [*veil_command(), "submit", "--server", self.api, *args]
        env = {**os.environ, "VEIL_API_KEY": key}
        if not wait:
            return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)


@pytest.fixture(scope="module")
def live(tmp_path_factory, detection_models) -> Iterator[Live]:
    from veil.db.session import open_database

    proxy = Proxy()
    data = tmp_path_factory.mktemp("veil-data")
    with veil_server(data, env={"VEIL_PUBLIC_URL": proxy.url}) as base:
        proxy.target = int(base.rsplit(":", 1)[1])
        engine, db = open_database(f"sqlite:///{(data / 'veil.db').resolve()}")
        try:
            yield Live(proxy, data, db)
        finally:
            engine.dispose()
            proxy.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """40 photos (in two subfolders) and 2 short videos: 40 + 2 x 5 = 50 credits."""
    root = tmp_path_factory.mktemp("inputs")
    for n in range(40):
        path = root / f"day{n % 2 + 1}" / f"photo{n:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(jpeg_bytes(160, 120, seed=n))
    (root / "clips").mkdir()
    for n in range(2):
        make_clip(root / "clips" / f"clip{n}.mp4", frames=20)
    (root / "notes.txt").write_text("not media")
    return root


FOLDER_COST = 50


def _manifest(out: Path) -> dict[str, dict]:
    return {row["input"]: row for row in json.loads((out / "manifest.json").read_text())["files"]}


def _check_outputs(folder: Path, out: Path, manifest: dict[str, dict]) -> None:
    """Every input has one completed entry whose output sits where its input sat, with its dimensions."""
    inputs = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".jpg", ".mp4"))
    assert sorted(manifest) == inputs
    for rel, row in manifest.items():
        assert row["status"] == "completed" and row["error"] is None, row
        assert len(row["outputs"]) == 1 and Path(row["outputs"][0]).parent == Path(rel).parent, row
        if rel.endswith(".jpg"):
            assert Image.open(out / row["outputs"][0]).size == Image.open(folder / rel).size
        else:
            assert (out / row["outputs"][0]).stat().st_size > 0
    assert not [p for p in out.rglob("*.part")], "a part file was left behind"


def _charged(jobs: list[dict]) -> int:
    return sum(j["credits_charged"] - j["credits_refunded"] for j in jobs)


@pytest.mark.slow
def test_folder_four_jobs_in_flight_each_job_created_and_charged_once(live: Live, folder: Path, tmp_path: Path):
    key, out = live.key(FOLDER_COST + 10), tmp_path / "out"
    run = live.submit(key, str(folder), "--jobs", "4", "--exclude", "*.txt", "-o", str(out))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = _manifest(out)
    _check_outputs(folder, out, manifest)
    jobs = live.jobs(key)
    assert sorted(j["job_id"] for j in jobs) == sorted(row["job_id"] for row in manifest.values())  # once each
    assert all(
        j["credits_charged"] == row["cost"] for j in jobs for row in manifest.values() if row["job_id"] == j["job_id"]
    )
    assert _charged(jobs) == FOLDER_COST and live.balance(key) == 10
    again = live.submit(key, str(folder), "--jobs", "4", "--exclude", "*.txt", "-o", str(out))
    assert again.returncode == 0 and "42 completed" in again.stdout, again.stdout
    assert len(live.jobs(key)) == 42 and live.balance(key) == 10  # finished files skipped


@pytest.mark.slow
def test_interrupted_run_rerun_charges_nothing_twice(live: Live, folder: Path, tmp_path: Path):
    key, out = live.key(FOLDER_COST), tmp_path / "out"
    proc = live.submit(key, str(folder), "--jobs", "4", "--exclude", "*.txt", "-o", str(out), wait=False)
    deadline = time.monotonic() + 300
    while not (out / "manifest.json").exists() or sum(r["status"] == "completed" for r in _manifest(out).values()) < 12:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert sum(r["status"] == "completed" for r in _manifest(out).values()) < 42
    rerun = live.submit(key, str(folder), "--jobs", "4", "--exclude", "*.txt", "-o", str(out))
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    manifest = _manifest(out)
    _check_outputs(folder, out, manifest)
    jobs = live.jobs(key)
    assert _charged(jobs) == FOLDER_COST and live.balance(key) == 0
    charged = [j for j in jobs if j["credits_charged"]]
    assert sorted(j["job_id"] for j in charged) == sorted(r["job_id"] for r in manifest.values())
    assert len(jobs) <= 42 + 4  # at most one job per file in flight created again (killed before it was recorded)


@pytest.mark.slow
def test_proxy_failing_a_tenth_of_requests(live: Live, folder: Path, tmp_path: Path):
    key, out = live.key(FOLDER_COST), tmp_path / "out"
    live.proxy.faults.clear()
    live.proxy.fail, live.proxy.cut_next = 0.1, 3
    try:
        run = live.submit(key, str(folder), "--jobs", "4", "--exclude", "*.txt", "-o", str(out))
    finally:
        live.proxy.fail = 0.0
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    _check_outputs(folder, out, _manifest(out))
    assert live.balance(key) == 0
    assert live.proxy.faults["cut"] >= 3 and {"503", "reset", "reset-after"} <= set(live.proxy.faults), (
        live.proxy.faults
    )


def test_balance_for_half_the_files_refuses_the_rest_clearly(live: Live, tmp_path: Path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in range(6):
        (src / f"p{n}.jpg").write_bytes(jpeg_bytes(96, 64, seed=100 + n))
    key = live.key(3)
    run = live.submit(key, str(src), "--jobs", "2", "-o", str(out))
    assert run.returncode == 4, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = _manifest(out)
    refused = [r for r in manifest.values() if r["status"] == "refused"]
    assert sum(r["status"] == "completed" for r in manifest.values()) == 3 and len(refused) == 3
    assert all("402" in r["error"] and "credit" in r["error"].lower() for r in refused), refused
    assert live.balance(key) == 0
    by_id = {j["job_id"]: j for j in live.jobs(key)}
    assert all(by_id[r["job_id"]]["credits_charged"] == 0 for r in refused)
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(
        Path(r["outputs"][0]).name for r in manifest.values() if r["status"] == "completed"
    )


def test_max_credits_refuses_before_approval(live: Live, folder: Path, tmp_path: Path):
    key, out = live.key(20), tmp_path / "out"
    run = live.submit(key, str(folder / "clips"), "--max-credits", "4", "-o", str(out))
    assert run.returncode == 4
    rows = _manifest(out).values()
    assert [r["status"] for r in rows] == ["refused", "refused"] and all("5 credits" in r["error"] for r in rows)
    assert live.balance(key) == 20 and not list(out.glob("clips/*"))
    assert "cost      clip0.mp4: 5 credits" in run.stdout and "refused   clip0.mp4: costs 5" in run.stderr


def test_wrong_key_and_file_over_the_limit_are_one_line_with_their_exit_status(live: Live, tmp_path: Path):
    photo = tmp_path / "in" / "p.jpg"
    photo.parent.mkdir()
    photo.write_bytes(jpeg_bytes())
    wrong = live.submit("00000000-0000-0000-0000-000000000000", str(photo), "-o", str(tmp_path / "out"))
    assert wrong.returncode == 3
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: create a job for p.jpg: HTTP 401")
    config = tmp_path / "client.toml"  # the server and the key from the config file alone
    config.write_text(f'server = "{live.api}"\nkey = "00000000-0000-0000-0000-000000000000"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("VEIL_API_KEY", "VEIL_SERVER")}
    from_file = subprocess.run(
        [*veil_command(), "submit", str(photo), "-o", str(tmp_path / "out3")],
        text=True,
        capture_output=True,
        env={**env, "VEIL_CLIENT_CONFIG": str(config)},
        timeout=120,
    )
    assert from_file.returncode == 3 and "HTTP 401" in from_file.stderr, from_file.stderr
    huge = tmp_path / "in2" / "huge.mp4"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(2**32)  # sparse: one byte over the 4294967295 limit
    over = live.submit(live.key(1), str(huge), "-o", str(tmp_path / "out2"))
    assert over.returncode == 5 and "HTTP 413" in _manifest(tmp_path / "out2")["huge.mp4"]["error"]
    assert not list((tmp_path / "out2").glob("*.mp4"))


def test_library_submit_wait_download_and_unreachable(live: Live, tmp_path: Path):
    photo = tmp_path / "street.jpg"
    photo.write_bytes(jpeg_bytes(200, 150, seed=7))
    key = live.key(10)
    job = Client(live.api, key).submit(photo, {"enable_lp": False})
    assert job.priced() == 1
    job.approve()
    report = job.wait()
    [out] = job.download(tmp_path / "out", report)
    assert Image.open(out).size == (200, 150) and live.balance(key) == 9
    assert job.report()["model_config"]["enable_lp"] is False
    box = (20, 30, 90, 100)
    job.render({"style": "solid"}, {"0": [{"op": "add", "kind": "face", "frames": {"0": list(box)}}]})
    [again] = job.download(tmp_path / "rendered", job.wait())
    assert np.asarray(Image.open(out).crop(box)).std() > 40  # noise: nothing was drawn there at first
    assert np.asarray(Image.open(again).crop((30, 40, 80, 90))).std() < 5  # the added box, solid
    before = live.balance(key)
    cancelled = Client(live.api, key).submit(photo)
    assert cancelled.priced() == 1
    assert cancelled.cancel()["state"] == "cancelled"
    with pytest.raises(JobFailed, match="cancel"):
        cancelled.approve()
    assert live.balance(key) == before  # nothing charged for the cancelled job
    with pytest.raises(KeyRefused):
        Client(live.api, "11111111-1111-1111-1111-111111111111").submit(photo)
    with pytest.raises(Unreachable):
        Client("http://127.0.0.1:9/v1", key, http=Http(retries=1, backoff=0.01)).submit(photo)


@pytest.mark.slow
def test_300_mb_upload_killed_half_way_resumes_without_resending(live: Live, tmp_path: Path):
    size = 300 * 1024 * 1024
    big = tmp_path / "in" / "big.jpg"
    big.parent.mkdir()
    big.write_bytes(padded_jpeg(size))
    key, out = live.key(5), tmp_path / "out"
    live.proxy.block_bytes = live.proxy.blocks_without_md5 = 0
    proc = live.submit(key, str(big), "--concurrency", "4", "--checksum", "md5", "-o", str(out), wait=False)
    deadline = time.monotonic() + 300
    while live.proxy.block_bytes < size // 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    first = live.proxy.block_bytes
    assert first < size, "the upload finished before the kill"
    live.proxy.block_bytes = 0
    rerun = live.submit(key, str(big), "--concurrency", "4", "--checksum", "md5", "-o", str(out))
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    print(f"sent before the kill {first / size:.0%}, after it {live.proxy.block_bytes / size:.0%}")
    assert live.proxy.block_bytes < 0.6 * size, (first, live.proxy.block_bytes)
    assert live.proxy.blocks_without_md5 == 0  # every block carried its Content-MD5 (the store checked it)
    [job] = live.jobs(key)
    assert job["state"] == "completed" and job["file_size"] == size and job["credits_charged"] == 1
    assert Image.open(out / _manifest(out)["big.jpg"]["outputs"][0]).size == Image.open(big).size


@pytest.mark.slow
def test_client_alone_installs_no_engine_dependency(tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    client = shutil.copytree(
        Path(__file__).resolve().parents[1] / "client",
        tmp_path / "client",
        ignore=shutil.ignore_patterns("build", "*.egg-info"),
    )  # pip builds in the source tree
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(client)], capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    listed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True, check=True, timeout=120
    )
    names = {row["name"].lower() for row in json.loads(listed.stdout)}
    assert "veil-client" in names and "requests" in names
    engine = {
        "numpy",
        "onnxruntime",
        "onnx",
        "openvino",
        "opencv-python",
        "opencv-python-headless",
        "av",
        "pillow",
        "torch",
        "veil",
    }
    assert not names & engine, names & engine
    code = "import veil_client, sys; assert 'numpy' not in sys.modules; print(veil_client.Client)"
    subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, timeout=60)


def test_walk_patterns_layout_and_collisions(tmp_path: Path):
    for rel in ("a/x.jpg", "a/b/y.mp4", "a/.hidden.jpg", "a/out/old.jpg", "a/z.txt", "c.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = walk([tmp_path / "a", tmp_path / "c.jpg"], exclude=["*.txt"], skip=tmp_path / "a" / "out")
    assert [rel for _, rel in found] == ["b/y.mp4", "x.jpg", "c.jpg"]
    assert [rel for _, rel in walk([tmp_path / "a"], include=["b/*"])] == ["b/y.mp4"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.jpg").write_bytes(b"y")
    with pytest.raises(ClientError, match="share the output path c.jpg"):
        walk([tmp_path / "c.jpg", tmp_path / "d"])


def test_journal_keeps_acknowledged_blocks_and_drops_a_line_cut_by_a_kill(tmp_path: Path):
    header = {"session_uri": "http://x/blob?sig=1", "size": 10, "block_size": 4}
    journal = Journal(tmp_path / "j.jsonl", header)
    journal.start(set())
    journal.add(2)
    journal.add(0)
    with open(journal.path, "a") as f:
        f.write("1")  # killed before the newline: "1" may be the start of "17"
    assert Journal(journal.path, header).load() == {0, 2}
    assert Journal(journal.path, {**header, "size": 11}).load() is None  # the file changed: start over


def _resume_from_the_store(url: str, read_url: str, tmp_path: Path) -> None:
    """The store's Get Block List, not the journal, decides what is sent again: the journal claims a block the
    store never got, and misses two it did get."""
    from veil_client import transfer

    src, block = tmp_path / "in.bin", 64 * 1024
    src.write_bytes(os.urandom(4 * block + 1000))
    http, journal = Http(), tmp_path / "in.jsonl"
    header = {"session_uri": url, "size": src.stat().st_size, "block_size": block}
    transfer.Journal(journal, header).start(set())
    transfer._put_blocks(http, url, src, [0, 2, 3], None, 2, block, True, None, threading.Semaphore(2))
    transfer.Journal(journal, header).start({0, 1})  # 1 never reached the store; 2 and 3 did, unrecorded
    sent = transfer.upload(http, url, src, journal, concurrency=2, block_size=block)
    assert sent == block + 1000  # blocks 1 and 4 (the last, 1000 bytes): what the store lacked (the journal
    # alone would send 2, 3 and 4, then everything again when the commit found no block 1)
    assert not journal.exists()
    size = transfer.download(http, read_url, tmp_path / "out.bin", tmp_path / "out.part")
    assert size == src.stat().st_size and (tmp_path / "out.bin").read_bytes() == src.read_bytes()


def test_resume_asks_azurite_get_block_list_over_the_journal(azurite_connection_string, tmp_path: Path):
    """Azure answers Get Block List to a SAS with read permission."""
    from datetime import datetime, timedelta

    from azure.storage.blob import BlobServiceClient, generate_blob_sas

    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = service.create_container("resume")
    sas = generate_blob_sas(
        service.account_name,
        "resume",
        "in.bin",
        account_key=service.credential.account_key,
        permission="racw",
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    _resume_from_the_store(f"{container.url}/in.bin?{sas}", f"{container.url}/in.bin?{sas}", tmp_path)


def test_resume_asks_veils_store_with_the_upload_url_alone(tmp_path: Path):
    """Veil's embedded store answers the uncommitted Get Block List to the upload URL (sp=cw) it hands out."""
    from datetime import timedelta

    from fastapi import FastAPI

    from veil.api.blob import create_blob_router
    from veil.storage.local import LocalBlobStore
    from veil.storage.testing import free_port, serve_app
    from veil_client import transfer

    port = free_port()
    store = LocalBlobStore(tmp_path / "blobs", "veiltest", os.urandom(32), f"http://127.0.0.1:{port}")
    app = FastAPI()
    app.include_router(create_blob_router(store))
    with serve_app(app, port):
        url = store.signed_upload_url("uploads", "in.bin", timedelta(hours=1))
        assert "sp=cw&" in url
        _resume_from_the_store(url, store.signed_download_url("uploads", "in.bin", timedelta(hours=1)), tmp_path)
        # Killed after the commit, before the journal was removed; the service froze the input meanwhile: the
        # rerun's first block gets 412 LeaseIdMissing, which says the upload is done (nothing sent, no error).
        src, journal = tmp_path / "in.bin", tmp_path / "in.jsonl"
        header = {"session_uri": url, "size": src.stat().st_size, "block_size": 64 * 1024}
        transfer.Journal(journal, header).start({0})
        store.freeze("uploads", "in.bin")
        assert transfer.upload(Http(), url, src, journal, block_size=64 * 1024) == 0 and not journal.exists()


def test_blocks_carry_a_content_md5_where_only_it_would_notice_corruption():
    """auto: plain HTTP across a network (a name or a remote address) yes; HTTPS (TLS checks every record) and
    this machine (no wire) no."""
    from veil_client.transfer import wants_checksum

    assert wants_checksum("http://veil.example.org/blob/acct/uploads/x?sig=1")
    assert wants_checksum("http://10.0.0.7:8000/blob/acct/uploads/x?sig=1")
    assert not wants_checksum("https://veil.example.org/blob/acct/uploads/x?sig=1")
    assert not wants_checksum("https://acct.blob.core.windows.net/uploads/x?sig=1")
    for local in ("http://127.0.0.1:8000/b", "http://127.3.4.5/b", "http://[::1]:8000/b", "http://localhost:8000/b"):
        assert not wants_checksum(local), local
