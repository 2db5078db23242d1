#!/usr/bin/env bash
# First README command: install everything and start `veil serve` on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/veil serve "$@"
