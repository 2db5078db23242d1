#!/usr/bin/env bash
# Second README command: install everything the tests need and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/test-services.sh
exec .venv/bin/python -m pytest "$@"
