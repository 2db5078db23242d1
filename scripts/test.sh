#!/usr/bin/env bash
# Second README command: install everything the tests need and run them. With no test paths given
# (CI: .ci/run), the service tests then run a second time on PostgreSQL (migrations included).
set -euo pipefail
cd "$(dirname "$0")/.."
# CI set to anything but "", "0" or "false" (any case); the same test as under_ci() in tests/conftest.py
under_ci() { local ci="${CI:-}"; case "${ci,,}" in "" | 0 | false) return 1 ;; esac; }
bash scripts/setup.sh test
bash scripts/test-services.sh
subset=""
for arg in "$@"; do
  case "$arg" in tests*|*.py|*::*) subset=yes ;; esac  # a chosen subset: no house checks, no second run
done
[ -n "$subset" ] || bash scripts/check.sh
.venv/bin/python -m pytest "$@"
[ -z "$subset" ] || exit 0
SERVICE_TESTS=(tests/test_api_public.py tests/test_keys_credits.py tests/test_worker.py tests/test_job_lease.py
               tests/test_events.py tests/test_upload_guard.py tests/test_strict_input.py tests/test_api_azure_backend.py
               tests/test_review_service.py)
if ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  echo "PostgreSQL is not running on 127.0.0.1: the service tests ran on SQLite only" >&2
  ! under_ci || exit 1
  exit 0
fi
echo "--- the service tests again, on PostgreSQL"
VEIL_TEST_DATABASE_URL="${VEIL_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}" \
  exec .venv/bin/python -m pytest "$@" -m "not slow or both_databases" "${SERVICE_TESTS[@]}"
