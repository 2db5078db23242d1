"""Test and bench support: a real uvicorn server on a free loopback port, and Azurite.

Used by the storage tests, `bench/bench_upload.py` and the service's end-to-end tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_app(app, port: int | None = None, lifespan: str = "off") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def azurite_binary(install: bool = True) -> Path | None:
    """`node_modules/.bin/azurite-blob` of the repository, or None when node is missing. When
    node is there but Azurite is not, runs `npm install` (the version pinned in package.json),
    as scripts/test-services.sh does."""
    binary = REPO / "node_modules" / ".bin" / "azurite-blob"
    if shutil.which("node") is None:
        return None
    if not binary.exists() and install and shutil.which("npm"):
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=REPO, check=True, timeout=600
        )
    if not binary.exists():
        raise RuntimeError(f"Azurite is not installed at {binary}: run `npm install` in {REPO}")
    return binary


@contextmanager
def azurite(binary: Path | None = None) -> Iterator[str]:
    """Start Azurite's blob service in memory on a free loopback port (telemetry off, API version
    check off: the SDK is newer than Azurite, notes §0); yields the connection string."""
    binary = binary or azurite_binary()
    if binary is None:
        raise RuntimeError("Azurite needs node, which is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Azurite exited: {process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Azurite did not start within 60 s") from None
                time.sleep(0.1)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
