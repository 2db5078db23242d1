#!/usr/bin/env bash
# Refreshes the lock files from the ranges in pyproject.toml and client/pyproject.toml (README "Dependencies"):
#   requirements.lock       Veil and veil-client with postgres, celery and azure: deploy/Dockerfile, scripts/serve.sh
#   requirements-test.lock  the same pins plus the test tools: scripts/test.sh, .ci/run
# Every distribution is pinned with the sha256 of each of its files. uv resolves them once for every platform
# (`--universal`), for CPython 3.11 and later; they are installed and tested on Linux x86-64, CPython 3.11.
# Pins already in a lock stay unless a range excludes them; `bash scripts/lock.sh --upgrade` takes the newest
# releases (or `--upgrade-package NAME`). Commit the locks with the change that needed them.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/uv --version 2>/dev/null | grep -q "^uv $UV_VERSION" || .venv/bin/python -m pip install -q "uv==$UV_VERSION"
compile() {  # compile OUTPUT EXTRAS [uv options]
  local out=$1 extras=$2
  shift 2
  printf -- '-e .[%s]\n-e ./client\nsetuptools>=68\n' "$extras" | .venv/bin/uv pip compile - -q --universal \
    --python-version 3.11 --generate-hashes --no-emit-package veil --no-emit-package veil-client \
    --custom-compile-command "bash scripts/lock.sh" -o "$out" "$@"
}
compile requirements.lock postgres,celery,azure "$@"
compile requirements-test.lock postgres,celery,azure,test -c requirements.lock "$@"
echo "lock: wrote requirements.lock and requirements-test.lock"
