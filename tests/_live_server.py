"""`veil serve` as a real subprocess on a free loopback port, for browser tests and the screenshot script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from veil.storage.testing import free_port

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/test-services.sh installs it); never a browser download
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def veil_command() -> list[str]:
    script = Path(sys.executable).with_name("veil")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from veil.cli import main; main()"]


@contextmanager
def veil_server(data: Path, env: dict[str, str] | None = None, ready_s: float = 120) -> Iterator[str]:
    """Start `veil serve --data-dir data` with `env` added; yield its base URL; stop it afterwards."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*veil_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"veil serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/docs", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"veil serve not ready after {ready_s} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
