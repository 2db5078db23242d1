"""Upload a 2 GiB file through the embedded blob store on loopback, with the seed's client loop (4 MiB
blocks one at a time, URL-safe block ids, then the block list) and with the `veil_client` library (its
defaults: 16 MiB blocks for a file this size, 4 in flight, no Content-MD5 to this machine; and the same with
Content-MD5 forced, as the client sends it over plain HTTP across a network),
on plain loopback and through a loopback proxy that adds 25 ms each way (tests/_client_proxy.py, as a real
network does); download it back; print MB/s, the CPU seconds of each uploading process and of the server,
the ratio client/seed, and peak RSS. Each setting runs `--runs` times, the three uploads interleaved, and
the ratios are of the medians. Not a test: figures only.

    .venv/bin/python bench/bench_upload.py [--size-mib 2048] [--runs 3] [--delay-ms 25] [--workdir /tmp]

The server, the proxy and each upload are separate processes, so each peak RSS (VmHWM from /proc)
measures one of them alone. All files go to a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import requests

MIB = 1024 * 1024
TESTS = Path(__file__).resolve().parents[1] / "tests"
NAMES = {
    "seed": "seed loop (4 MiB, 1 at a time)",
    "client": "veil_client (defaults: no MD5 on loopback)",
    "client-md5": "veil_client (Content-MD5 forced)",
}


def serve(root: Path, port: int, key: bytes) -> None:
    import uvicorn
    from fastapi import FastAPI

    from veil.api.blob import create_blob_router
    from veil.storage.local import LocalBlobStore

    store = LocalBlobStore(root, "veilbench", key, f"http://127.0.0.1:{port}")
    app = FastAPI()
    app.include_router(create_blob_router(store, lambda c, b, s: print(f"committed {c}/{b}: {s} bytes", flush=True)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return f"{os.cpu_count()} CPUs"


def make_file(path: Path, size: int) -> str:
    """Random content (a 64 MiB random pattern, each copy tweaked so no two blocks are equal)."""
    pattern = bytearray(os.urandom(64 * MIB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            pattern[:8] = written.to_bytes(8, "big")
            piece = memoryview(pattern)[: size - written]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def vendor_upload(session_uri: str, file_name: str) -> tuple[int, float]:
    """The seed's upload_file: 4 MiB blocks, urlsafe ids, 201 checks, then the block list.
    Returns the number of blocks and the seconds the block list (the commit) took."""
    chunk_size = 4 * MIB
    block_ids = []
    with open(file_name, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            block_id = base64.urlsafe_b64encode(len(block_ids).to_bytes(4, byteorder="big")).decode("utf-8")
            if not chunk:
                break
            response = requests.put(session_uri + "&comp=block" + "&blockid=" + block_id, data=chunk)
            if response.status_code != 201:
                raise Exception(f"Failed to upload file: {response.text}")
            block_ids.append(block_id)
    xml = "<BlockList>" + "".join(f"<Latest>{b}</Latest>" for b in block_ids) + "</BlockList>"
    t = time.perf_counter()
    response = requests.put(session_uri + "&comp=blocklist", data=xml)
    if response.status_code != 201:
        raise Exception(f"Failed to upload file: {response.text}")
    return len(block_ids), time.perf_counter() - t


def upload_child(how: str, session_uri: str, file_name: str) -> None:
    """In a process of its own: one upload; prints its seconds and the process's peak RSS in MiB."""
    t = time.perf_counter()
    if how == "seed":
        vendor_upload(session_uri, file_name)
    else:
        from veil_client._http import Http
        from veil_client.transfer import upload

        # the library's defaults (Content-MD5 off on loopback: `wants_checksum`), or Content-MD5 forced on, as
        # over plain HTTP across a network
        upload(Http(), session_uri, Path(file_name), checksum=True if how == "client-md5" else None)
    times = os.times()
    print(time.perf_counter() - t, peak_rss_mib(os.getpid())[1], times.user + times.system)


def run_proxy(target: int, delay: float) -> None:
    sys.path.insert(0, str(TESTS))
    from _client_proxy import Proxy

    proxy = Proxy(delay=delay)
    proxy.target = target
    print(proxy.port, flush=True)
    while True:
        time.sleep(3600)


def wait_for(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3, help="runs of each upload (interleaved); medians compared")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="the proxy's delay each way")
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--serve", nargs=3, metavar=("ROOT", "PORT", "KEYHEX"), help=argparse.SUPPRESS)
    parser.add_argument("--proxy", nargs=2, metavar=("PORT", "DELAY"), help=argparse.SUPPRESS)
    parser.add_argument("--upload", nargs=3, metavar=("HOW", "URL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), bytes.fromhex(args.serve[2]))
        return
    if args.proxy:
        run_proxy(int(args.proxy[0]), float(args.proxy[1]))
        return
    if args.upload:
        upload_child(*args.upload)
        return

    from veil.storage.local import LocalBlobStore
    from veil.storage.testing import free_port

    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="veil-bench-upload-", dir=args.workdir))
    children: list[subprocess.Popen] = []
    try:
        src = work / "input.bin"
        t = time.perf_counter()
        sha = make_file(src, size)
        print(f"generated {size / MIB:.0f} MiB in {time.perf_counter() - t:.1f} s")

        port, key = free_port(), os.urandom(32)
        root = work / "store"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port), key.hex()])
        children.append(server)
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/", server)
        proxy = subprocess.Popen(
            [sys.executable, __file__, "--proxy", str(port), str(args.delay_ms / 1000)],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(proxy)
        proxied = f"http://127.0.0.1:{proxy.stdout.readline().strip()}"
        rss0, _ = peak_rss_mib(server.pid)
        print(f"server RSS at start: {rss0:.0f} MiB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        from veil_client.transfer import CONCURRENCY, block_size_for

        print(
            f"veil_client defaults for this file: {block_size_for(size) // MIB} MiB blocks, {CONCURRENCY} in "
            f"flight; {args.runs} runs of each upload, interleaved; CPU: {cpu_model()}"
        )
        mb, seconds, kept = size / 1e6, {}, None
        for label, url in (("loopback", base), (f"proxy +{args.delay_ms:g} ms each way", proxied)):
            store = LocalBlobStore(root, "veilbench", key, url)  # signs URLs pointing at `url`
            for run in range(args.runs):
                for how in NAMES:
                    blob = f"{how}-{label[:5]}-{run}.bin"
                    session_uri = store.signed_upload_url("uploads", blob, timedelta(hours=1))
                    server_cpu = cpu_seconds(server.pid)
                    out = subprocess.run(
                        [sys.executable, __file__, "--upload", how, session_uri, str(src)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout.split()
                    seconds.setdefault((label, how), []).append(float(out[0]))
                    assert store.size("uploads", blob) == size
                    print(
                        f"upload {label:22} {NAMES[how]:38} {float(out[0]):6.1f} s {mb / float(out[0]):5.0f} MB/s, "
                        f"CPU s client {float(out[2]):4.1f} server {cpu_seconds(server.pid) - server_cpu:4.1f}; "
                        f"peak RSS client {float(out[1]):3.0f} MiB server {peak_rss_mib(server.pid)[1]:3.0f} MiB; "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    if kept is None and how == "client":
                        kept = blob  # one client upload stays, for the download
                    else:
                        store.delete("uploads", blob)
            seed, client, md5 = (statistics.median(seconds[label, how]) for how in NAMES)
            print(
                f"  medians on {label}: seed {seed:.1f} s, client {client:.1f} s, with Content-MD5 {md5:.1f} s; "
                f"client / seed loop {seed / client:.1f}x ({seed / md5:.1f}x with Content-MD5, as over plain HTTP "
                "across a network)",
                flush=True,
            )

        store = LocalBlobStore(root, "veilbench", key, base)
        dest = work / "output.bin"
        t = time.perf_counter()
        digest = hashlib.sha256()
        with requests.get(store.signed_download_url("uploads", kept, timedelta(hours=1)), stream=True) as r:
            r.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in r.iter_content(chunk_size=MIB):
                    f.write(chunk)
                    digest.update(chunk)
        download_s = time.perf_counter() - t
        assert digest.hexdigest() == sha, "downloaded bytes differ from the upload"
        print(
            f"download (requests stream, 1 MiB chunks, sha256 checked): {download_s:.1f} s, "
            f"{mb / download_s:.0f} MB/s; server peak RSS {peak_rss_mib(server.pid)[1]:.0f} MiB"
        )
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
