"""Upload a 2 GiB file through the embedded blob store on loopback with the seed's client loop
(4 MiB blocks, URL-safe block ids, then the block list), download it back, and print MB/s and
the server's peak RSS. Not a test: figures only.

    .venv/bin/python bench/bench_upload.py [--size-mib 2048] [--workdir /tmp]

The server is a separate process (uvicorn + the `veil.api.blob` router) so its peak RSS
(VmHWM from /proc) measures the endpoint alone. All files go to a temporary directory that is
deleted afterwards.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import requests

MIB = 1024 * 1024


def serve(root: Path, port: int, key: bytes) -> None:
    import uvicorn
    from fastapi import FastAPI

    from veil.api.blob import create_blob_router
    from veil.storage.local import LocalBlobStore

    store = LocalBlobStore(root, "veilbench", key, f"http://127.0.0.1:{port}")
    app = FastAPI()
    app.include_router(create_blob_router(store, lambda c, b, s: print(f"committed {c}/{b}: {s} bytes", flush=True)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--serve", nargs=3, metavar=("ROOT", "PORT", "KEYHEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), bytes.fromhex(args.serve[2]))
        return

    from veil.storage.local import LocalBlobStore
    from veil.storage.testing import free_port

    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="veil-bench-upload-", dir=args.workdir))
    server = None
    try:
        src = work / "input.bin"
        t = time.perf_counter()
        sha = make_file(src, size)
        print(f"generated {size / MIB:.0f} MiB in {time.perf_counter() - t:.1f} s")

        port, key = free_port(), os.urandom(32)
        root = work / "store"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port), key.hex()])
        store = LocalBlobStore(root, "veilbench", key, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the blob server did not start") from None
                time.sleep(0.1)
        rss0, _ = peak_rss_mib(server.pid)

        session_uri = store.signed_upload_url("uploads", "bench.bin", timedelta(hours=1))
        t = time.perf_counter()
        blocks, commit_s = vendor_upload(session_uri, str(src))
        upload_s = time.perf_counter() - t
        _, peak_upload = peak_rss_mib(server.pid)
        assert store.size("uploads", "bench.bin") == size

        dest = work / "output.bin"
        t = time.perf_counter()
        digest = hashlib.sha256()
        with requests.get(store.signed_download_url("uploads", "bench.bin", timedelta(hours=1)), stream=True) as r:
            r.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in r.iter_content(chunk_size=MIB):
                    f.write(chunk)
                    digest.update(chunk)
        download_s = time.perf_counter() - t
        _, peak_all = peak_rss_mib(server.pid)
        assert digest.hexdigest() == sha, "downloaded bytes differ from the upload"

        mb = size / 1e6
        print(f"upload   {size / MIB:.0f} MiB in {blocks} blocks of 4 MiB + block list: {upload_s:.1f} s, "
              f"{mb / upload_s:.0f} MB/s (of which the block list commit: {commit_s:.1f} s)")
        print(f"download (requests stream, 1 MiB chunks, sha256 checked): {download_s:.1f} s, {mb / download_s:.0f} MB/s")
        print(f"server RSS: {rss0:.0f} MiB at start, peak {peak_upload:.0f} MiB after upload, "
              f"peak {peak_all:.0f} MiB after download")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
