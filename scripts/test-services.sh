#!/usr/bin/env bash
# Test-only infrastructure: Azurite (npm, pinned in package.json), Chromium for browser tests,
# and the local PostgreSQL/Redis the scaled-out tests use (started if this machine has them stopped).
# Under CI (CI set, not to "", 0 or false) it fails when any of them is still missing afterwards: the tests
# that need them would only be skipped (and tests/conftest.py turns such skips into failures too).
set -uo pipefail
cd "$(dirname "$0")/.."
# CI set to anything but "", "0" or "false" (any case); the same test as under_ci() in tests/conftest.py
under_ci() { local ci="${CI:-}"; case "${ci,,}" in "" | 0 | false) return 1 ;; esac; }
if [ -f package.json ] && [ ! -x node_modules/.bin/azurite-blob ]; then
  npm install --no-audit --no-fund --loglevel=error || echo "test-services: npm install failed" >&2
fi
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then  # browser tests (Playwright drives it)
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; } || true
fi
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if under_ci; then
  missing=""
  { command -v node >/dev/null && [ -x node_modules/.bin/azurite-blob ]; } || missing+=" Node.js+Azurite"
  [ -x /usr/bin/chromium ] || missing+=" Chromium"
  pg_isready -q -h 127.0.0.1 2>/dev/null || missing+=" PostgreSQL"
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || missing+=" Redis"
  if [ -n "$missing" ]; then
    echo "test-services: missing under CI:$missing" >&2
    exit 1
  fi
fi
exit 0
