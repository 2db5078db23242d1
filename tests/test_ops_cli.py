"""Issue 22 item 9, the command-line side: `veil keys create` without `--data-dir` stores the key where
`veil serve` (also without it) looks, from any working directory, and says where; the server's hint names a
command that runs from a shell whose PATH lacks the virtual environment; `veil doctor` after
`veil serve --port N` probes port N."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from _live_server import veil_command
from veil.storage.testing import free_port


def _wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_default_data_dir_hint_and_doctor_port(tmp_path, detection_models):
    from veil.engine.weights import model_dir

    home, elsewhere = tmp_path / "xdg-data", tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(XDG_DATA_HOME=str(home), VEIL_MODEL_DIR=str(model_dir()), PATH="/usr/local/bin:/usr/bin:/bin")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*veil_command(), "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", server, log)
        created = subprocess.run(
            [*veil_command(), "keys", "create", "--credits", "5"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        assert str(home / "veil" / "veil.db") in created.stdout  # says where the key was stored
        assert not (elsewhere / "data").exists() and not (tmp_path / "data").exists()
        r = requests.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"access_token": key}, timeout=30)
        assert r.status_code == 200, r.text  # the server knows the key

        hint = next(line for line in log.read_text().splitlines() if line.startswith("Get an API key:"))
        command = hint.split(":", 1)[1].split()[0]
        assert shutil.which(command, path=env["PATH"]) or Path(command).is_file(), hint
        again = subprocess.run(
            [*hint.split(":", 1)[1].split()[:-2], "--data-dir", str(tmp_path / "other")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )  # the hint runs as printed
        assert again.returncode == 0, again.stderr

        doctor = subprocess.run(
            [*veil_command(), "doctor"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )
        store = next(line for line in doctor.stdout.splitlines() if " store " in line)
        assert store.startswith("ok"), doctor.stdout  # probed the port serve listens on, not 8000
    finally:
        server.terminate()
        server.wait(60)
