#!/usr/bin/env bash
# Creates .venv, installs Veil (with extras given as $1, e.g. "test") and its models. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
# libarchive reads the zip/tar/7z/rar uploads (libarchive-c loads it with ctypes)
if ! ldconfig -p 2>/dev/null | grep -q "libarchive\.so"; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libarchive13 >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libarchive13t64 >/dev/null; }
  else
    echo "setup: install libarchive (Debian/Ubuntu: apt-get install libarchive13; macOS: brew install libarchive)" >&2
  fi
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# the client distribution (client/, no engine dependency) first: the main package depends on it
.venv/bin/pip install -q -e ./client
if [ -n "$extras" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
else
  .venv/bin/pip install -q -e .
fi
.venv/bin/veil models install
