#!/usr/bin/env bash
# The house's checks (scripts/test.sh runs them before the whole suite; contributors: pre-commit runs them too):
# the layers of DESIGN.md and no import circle (import-linter, contracts in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache
