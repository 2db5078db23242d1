"""Issue 22 items 9, 10 and 11: installing Veil.

- `scripts/serve.sh` run twice, the package index unreachable the second time, starts the service both
  times: the second run installs nothing (item 9); a changed pyproject.toml installs again.
- The lock files pin every distribution with hashes, agree with pyproject.toml's ranges, and are what
  scripts/setup.sh (so `.ci/run`) and deploy/Dockerfile install; this environment is the lock's (item 11).
- One version source; a CHANGELOG with an Unreleased section (item 11).
- The image's system packages are scripts/setup.sh's list, and that list covers the shared libraries the
  code loads beyond Python and its wheels (item 10; no Docker engine here to build the image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import distributions
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from veil.storage.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"service": ROOT / "requirements.lock", "test": ROOT / "requirements-test.lock"}
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _pins(lock: Path) -> dict[str, tuple[str, str | None, int]]:
    """name -> (version, marker, number of hashes) for every requirement of a lock file."""
    pins, name = {}, None
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), match.group(3), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, marker, hashes = pins[name]
            pins[name] = (version, marker, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: not a pinned requirement: {line!r}")
    return pins


def _applies(marker: str | None) -> bool:
    from packaging.markers import Marker

    return marker is None or Marker(marker).evaluate()


# ------------------------------------------------------------------------------------------------ item 9
def test_serve_sh_twice_the_second_time_without_a_package_index(tmp_path, detection_models):
    """A copy of the repository: the first run installs Veil into its new .venv (whose third-party packages
    are this environment's, through a .pth file after its own site-packages: minutes of downloads saved,
    nothing the scripts do changed), the second run has a dead package index and starts the service all
    the same."""
    repo = tmp_path / "veil"
    for name in (
        "scripts",
        "deploy",
        "src",
        "client",
        "pyproject.toml",
        "README.md",
        *[p.name for p in LOCKS.values()],
    ):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name,
            repo / name,
            **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if (ROOT / name).is_dir() else {}),
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VEIL_", "PIP_"))}
    env["VEIL_DATA_DIR"] = str(tmp_path / "data")
    subprocess.run([sys.executable, "-m", "venv", str(repo / ".venv")], check=True)
    (
        Path(
            subprocess.run(
                [repo / ".venv" / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        / "zz-this-environment.pth"
    ).write_text(sysconfig.get_paths()["purelib"] + "\n")
    dead = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
    }

    def serve(extra_env: dict[str, str]) -> str:
        port, log = free_port(), tmp_path / f"serve-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "scripts/serve.sh", "--port", str(port)],
                cwd=repo,
                env={**env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, f"serve.sh exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        return log.read_text()
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(60)

    serve({})
    stamp = repo / ".venv" / ".veil-setup"
    first = stamp.read_text()
    assert (repo / ".venv" / "bin" / "veil").is_file() and "requirements.lock" in first
    serve(dead)  # nothing missing, nothing changed: no index needed
    assert stamp.read_text() == first

    with (repo / "client" / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    serve({})  # a changed pyproject.toml installs again
    assert stamp.read_text() != first


# ----------------------------------------------------------------------------------------------- item 11
@pytest.mark.parametrize("which", sorted(LOCKS))
def test_the_lock_pins_every_distribution_with_hashes_and_meets_pyproject(which):
    import tomllib

    pins = _pins(LOCKS[which])
    assert pins and all(hashes >= 1 for _, _, hashes in pins.values()), "a pin without hashes"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    extras = ["postgres", "celery", "azure"] + (["test"] if which == "test" else [])
    wanted = [
        *project["dependencies"],
        *client["dependencies"],
        *(r for extra in extras for r in project["optional-dependencies"][extra]),
    ]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "veil-client" or (req.marker and not req.marker.evaluate()):
            continue  # veil-client: client/ in this repository, installed from its folder
        assert name in pins, f"{req} (pyproject.toml) is not in {LOCKS[which].name}: run scripts/lock.sh"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{LOCKS[which].name} pins {name}=={pins[name][0]}, outside {req}: run scripts/lock.sh"
        )
    if which == "test":  # the test lock is the service lock plus the test tools, never other versions
        service = _pins(LOCKS["service"])
        assert {n: p[0] for n, p in service.items()} == {n: pins[n][0] for n in service}


def test_setup_the_dockerfile_and_ci_install_from_the_lock():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '--require-hashes -r "$lock"' in setup and "requirements-test.lock" in setup
    assert "--no-deps --no-build-isolation -e ./client -e ." in setup  # nothing outside the lock
    assert "bash scripts/setup.sh test" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "--no-deps --no-build-isolation" in dockerfile
    assert "bash scripts/lock.sh" in (ROOT / "README.md").read_text()  # the documented refresh command


def test_this_environment_is_the_locks():
    """What scripts/setup.sh installed here (so what the tests run on) is the test lock's versions."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    pins = _pins(LOCKS["test"])
    wrong = {
        name: (version, installed.get(name))
        for name, (version, marker, _) in pins.items()
        if _applies(marker) and installed.get(name) != version
    }
    assert not wrong, f"(locked, installed) differ: {wrong}; run bash scripts/setup.sh test"


def test_one_version_source_and_a_changelog():
    import tomllib
    from importlib.metadata import version

    import veil

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "veil.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", veil.__version__) and version("veil") == veil.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog") and "\n## Unreleased\n" in changelog


# ----------------------------------------------------------------------------------------------- item 10
def _listed_packages() -> list[list[str]]:
    lines = (ROOT / "deploy" / "system-packages.txt").read_text().splitlines()
    return [[p.strip() for p in line.split("#")[0].split("|")] for line in lines if line.split("#")[0].strip()]


def test_the_image_installs_setup_sh_s_system_packages():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY deploy/system-packages.txt deploy/install-system-packages.sh deploy/" in dockerfile
    assert re.search(r"^RUN sh deploy/install-system-packages\.sh", dockerfile, re.M)
    assert "sh deploy/install-system-packages.sh" in (ROOT / "scripts" / "setup.sh").read_text()
    assert "apt-get install" not in (ROOT / "scripts" / "setup.sh").read_text()  # no second list
    assert any("libarchive13" in alternatives for alternatives in _listed_packages())


def _installed_debian_packages() -> dict[str, tuple[list[str], str]]:
    """Installed Debian packages: name -> (the packages its Depends/Pre-Depends name, priority)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Depends}, ${Pre-Depends}\t${Priority}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packages = {}
    for line in out.splitlines():
        name, depends, priority = line.split("\t")
        names = [re.split(r"[\s(:]", alt.strip())[0] for dep in depends.split(",") for alt in dep.split("|")]
        packages[name] = ([n for n in names if n], priority)
    return packages


def _closure(roots, packages) -> set[str]:
    seen, todo = set(), [r for r in roots if r in packages]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(d for d in packages[name][0] if d in packages)
    return seen


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian system")
def test_the_list_covers_the_libraries_the_code_loads():
    """Loads what the service loads (detectors, video, archives, database, HTTP) in a fresh interpreter and
    checks that every system library it mapped beyond a bare Python's is owned by a listed package, one of
    their dependencies, or the base system (required/important packages and theirs: every Debian image)."""
    probe = r"""
import ctypes, sqlite3, ssl, sys, uuid, zlib, bz2, lzma
def mapped():
    return {l.split()[5] for l in open("/proc/self/maps") if len(l.split()) >= 6 and ".so" in l.split()[5]}
bare = mapped()
import numpy as np, av, cv2, PIL.Image, pillow_heif, psycopg, libarchive
from veil.engine.config import ModelConfig
from veil.engine.detect import get_detector
import veil.api.app, veil.jobs.archive
get_detector(ModelConfig(blur_face=True, enable_lp=True)).detect(np.zeros((64, 64, 3), np.uint8))
outside = (p for p in mapped() - bare if not p.startswith((sys.prefix, sys.base_prefix)) and "site-packages" not in p)
print("\n".join(sorted(outside)))
"""
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert any("libarchive" in path for path in loaded), loaded  # the probe reached the system library
    packages = _installed_debian_packages()
    listed = [next((p for p in alternatives if p in packages), alternatives[0]) for alternatives in _listed_packages()]
    base = _closure([n for n, (_, priority) in packages.items() if priority in ("required", "important")], packages)
    allowed = _closure(listed, packages) | base
    for path in loaded:
        real = os.path.realpath(path)
        candidates = {path, real, real.replace("/usr/lib/", "/lib/", 1)}
        owners = set()
        for candidate in candidates:
            found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            owners |= (
                {o.split(":")[0] for o in found.stdout.split(": ")[0].split(", ") if o}
                if found.returncode == 0
                else set()
            )
        assert owners, f"{path}: no Debian package owns it"
        assert owners & allowed, f"{path} ({', '.join(owners)}) is loaded but not in deploy/system-packages.txt"
