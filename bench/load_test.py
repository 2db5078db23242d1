"""Load test of `veil serve` on loopback: N concurrent clients, each in a loop for a bounded time,
create a job, upload an 8 MiB file with the seed client's block loop (4 MiB Put Blocks with URL-safe
ids, then Put Block List), approve it (the seed's loop: 302 means retry) and poll its result once.
Prints requests/s, p50/p99 latency per route, errors (should be 0), the server's RSS at the start and
every quarter of the run, and its peak RSS and open file descriptors. Not a test: figures only.

    .venv/bin/python bench/load_test.py [--clients 50] [--seconds 60] [--size-mib 8] [--signin-clients 3]

With `--signin-clients N` (issue 18) the run is made twice on the same server: once as above, once with N
anonymous clients beside the seed-style ones, each posting sign-ins with random emails and passwords as fast
as it is answered, every one from a new source address (`X-Forwarded-For`, which uvicorn trusts from
loopback: the worst case, no address ever backs off). A probe client with its own key times `GET /v1/jobs`
every 0.2 s in both runs; the API's p99 (probe, and every seed-style request) is printed for both.

The server is a separate process (`veil serve`, embedded defaults, a temporary data directory that is
deleted afterwards) with `VEIL_WORKER=none`: jobs are priced (the upload is read and hashed) and
queued, never anonymized, so the figures are the API's, the blob endpoint's and pricing's. The file
is a valid JPEG padded to the size with comment segments, priced as one image. Each client has its
own API key (the per-key upload cap is not what is measured).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _service_helpers import padded_jpeg  # noqa: E402

MIB = 1024 * 1024
ADMIN = "load-test-admin"


def proc_figures(pid: int) -> dict[str, float]:
    """RSS and peak RSS (MiB) and open file descriptors of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "rss": int(fields["VmRSS"].split()[0]) / 1024,
        "peak": int(fields["VmHWM"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, VEIL_WORKER="none", VEIL_ADMIN_TOKEN=ADMIN, VEIL_DATA_DIR=str(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / "server.log", "wb"),
    )
    for _ in range(300):  # about 60 s
        try:
            requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).raise_for_status()
            return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("veil serve did not start within 60 s")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.jobs = 0

    def call(self, route: str, method: str, url: str, expect: tuple[int, ...], **kwargs) -> requests.Response | None:
        start = time.perf_counter()
        try:
            response = requests.request(method, url, timeout=120, **kwargs)
        except requests.RequestException as exc:
            self.error(f"{route}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latency[route].append(elapsed)
        if response.status_code not in expect:
            self.error(f"{route}: {response.status_code} {response.text[:200]}")
            return None
        return response

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def client(base: str, key: str, data: bytes, deadline: float, rec: Recorder) -> None:
    """The seed client's calls, in a loop until `deadline` (the last job is finished, not cut)."""
    headers = {"access_token": key}
    while time.monotonic() < deadline:
        r = rec.call(
            "create_upload_session",
            "POST",
            f"{base}/v1/create_upload_session",
            (200,),
            headers=headers,
            json={
                "file_name": "load.jpg",
                "file_size": len(data),
                "content_type": "octet-stream",
                "model": "blur",
                "model_config": {},
            },
        )
        if r is None:
            return
        session_uri, job_id = r.json()["session_uri"], r.json()["job_id"]
        ids = []
        for start in range(0, len(data), 4 * MIB):
            block_id = base64.urlsafe_b64encode(len(ids).to_bytes(4, byteorder="big")).decode()
            if (
                rec.call(
                    "put_block",
                    "PUT",
                    session_uri + "&comp=block&blockid=" + block_id,
                    (201,),
                    data=data[start : start + 4 * MIB],
                )
                is None
            ):
                return
            ids.append(block_id)
        xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
        if rec.call("put_block_list", "PUT", session_uri + "&comp=blocklist", (201,), data=xml) is None:
            return
        while True:
            r = rec.call(
                "approve_job",
                "POST",
                f"{base}/v1/approve_job/{job_id}",
                (200, 202, 302),
                headers=headers,
                allow_redirects=False,
            )
            if r is None:
                return
            if r.status_code != 302:
                break
            time.sleep(0.5)  # the seed sleeps 3 s here
        r = rec.call("job_result", "GET", f"{base}/v1/job_result/{job_id}", (200,), headers=headers)
        if r is None:
            return
        if r.json()["state"] != "queued":
            rec.error(f"job_result: job {job_id} is {r.json()['state']}: {r.json()['job_status_description']}")
            return
        with rec.lock:
            rec.jobs += 1


def signin_client(base: str, deadline: float, answers: dict[int, int], lock: threading.Lock) -> None:
    """Anonymous sign-ins with random emails and passwords, each from a new address, until `deadline`."""
    with requests.Session() as http:
        while time.monotonic() < deadline:
            http.headers["X-Forwarded-For"] = ".".join(["10"] + [str(random.randrange(256)) for _ in range(3)])
            try:
                page = http.get(f"{base}/admin/login", timeout=120)
                token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
                status = http.post(
                    f"{base}/admin/login",
                    timeout=120,
                    allow_redirects=False,
                    data={
                        "csrf_token": token,
                        "email": f"{random.getrandbits(64):x}@example.com",
                        "password": f"{random.getrandbits(64):x}",
                    },
                ).status_code
            except (requests.RequestException, AttributeError):
                status = 0
            with lock:
                answers[status] = answers.get(status, 0) + 1


def probe(base: str, key: str, deadline: float, rec: Recorder) -> None:
    while time.monotonic() < deadline:
        rec.call("GET /v1/jobs (probe)", "GET", f"{base}/v1/jobs", (200,), headers={"access_token": key})
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    base: str, keys: list[str], probe_key: str, data: bytes, seconds: float, signin_clients: int, server_pid: int
) -> tuple[Recorder, float, list[float], dict[int, int]]:
    """One bounded run: the seed-style clients, the probe and `signin_clients` anonymous sign-in clients."""
    rec, answers, lock = Recorder(), {}, threading.Lock()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(base, key, data, deadline, rec)) for key in keys]
    threads.append(threading.Thread(target=probe, args=(base, probe_key, deadline, rec)))
    threads += [
        threading.Thread(target=signin_client, args=(base, deadline, answers, lock)) for _ in range(signin_clients)
    ]
    for thread in threads:
        thread.start()
    rss = [proc_figures(server_pid)["rss"]]
    for quarter in (1, 2, 3):
        time.sleep(max(0.0, started + seconds * quarter / 4 - time.monotonic()))
        rss.append(proc_figures(server_pid)["rss"])
    for thread in threads:
        thread.join(seconds + 300)
    return rec, time.monotonic() - started, rss, answers


def report(title: str, rec: Recorder, elapsed: float, size_mib: float, answers: dict[int, int]) -> dict[str, float]:
    """Print one run's figures; the p99s (ms) of the probe and of all seed-style requests."""
    total = sum(len(v) for v in rec.latency.values())
    print(f"-- {title}")
    print(
        f"jobs created, uploaded, approved and queued: {rec.jobs} in {elapsed:.1f} s "
        f"({rec.jobs * size_mib / elapsed:.1f} MiB/s uploaded)"
    )
    print(f"requests: {total}, {total / elapsed:.1f}/s")
    print(f"{'route':<24}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}")
    for route, values in rec.latency.items():
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"{route:<24}{len(values):>7}{p50:>10.1f}{p99:>10.1f}")
    seed = [v for route, values in rec.latency.items() if "probe" not in route for v in values]
    figures = {
        "probe": percentile(rec.latency["GET /v1/jobs (probe)"], 0.99) * 1000,
        "seed": percentile(seed, 0.99) * 1000 if seed else float("nan"),
    }
    print(f"API p99: GET /v1/jobs (probe) {figures['probe']:.1f} ms, all seed-style requests {figures['seed']:.1f} ms")
    if answers:
        counts = ", ".join(f"{n}x {status or 'no answer'}" for status, n in sorted(answers.items()))
        print(f"anonymous sign-ins answered: {sum(answers.values())} ({counts})")
    print(f"errors: {len(rec.errors)}")
    for text in rec.errors[:10]:
        print(f"  {text}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--size-mib", type=float, default=8)
    parser.add_argument(
        "--signin-clients",
        type=int,
        default=0,
        help="a second run with this many anonymous sign-in clients beside the others",
    )
    parser.add_argument("--port", type=int, default=18765)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="veil-load-"))
    server = start_server(work / "data", args.port)
    base = f"http://127.0.0.1:{args.port}"
    runs = [("seed-style clients", 0)] + (
        [(f"the same with {args.signin_clients} anonymous sign-in clients", args.signin_clients)]
        if args.signin_clients
        else []
    )
    results = []
    try:
        keys = [
            requests.post(
                f"{base}/admin/api/keys",
                headers={"Authorization": f"Bearer {ADMIN}"},
                json={"credits": 1_000_000, "name": f"load{n}"},
            ).json()["key"]
            for n in range(args.clients + 1)
        ]
        data = padded_jpeg(int(args.size_mib * MIB))
        before = proc_figures(server.pid)
        for title, signins in runs:
            results.append((title, *run(base, keys[1:], keys[0], data, args.seconds, signins, server.pid)))
        after = proc_figures(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        log = (work / "server.log").read_text(errors="replace")
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"veil serve (VEIL_WORKER=none), {args.clients} clients, {args.seconds:g} s per run, "
        f"{args.size_mib:g} MiB per upload, {os.cpu_count()} CPUs"
    )
    p99 = [report(title, rec, elapsed, args.size_mib, answers) for title, rec, elapsed, rss, answers in results]
    if len(p99) == 2:
        print(
            f"API p99 without / with sign-in traffic: probe {p99[0]['probe']:.1f} / {p99[1]['probe']:.1f} ms "
            f"({p99[1]['probe'] / p99[0]['probe']:.2f}x), seed-style {p99[0]['seed']:.1f} / {p99[1]['seed']:.1f} ms "
            f"({p99[1]['seed'] / p99[0]['seed']:.2f}x)"
        )
    rss = [before["rss"]] + [v for *_, run_rss, _ in results for v in run_rss[1:]] + [after["rss"]]
    print(
        f"server RSS (MiB) at 0, each quarter of each run and the end: {', '.join(f'{v:.0f}' for v in rss)} "
        f"(peak {after['peak']:.0f}); open fds start {before['fds']:.0f}, end {after['fds']:.0f}"
    )
    tracebacks = log.count("Traceback")
    if tracebacks:
        print(f"server log: {tracebacks} tracebacks")


if __name__ == "__main__":
    main()
