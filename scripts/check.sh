#!/usr/bin/env bash
# The house's checks (scripts/test.sh runs them before the whole suite; .pre-commit-config.yaml before a commit):
# the layers of DESIGN.md and no import circle (import-linter, contracts in pyproject.toml), ruff's lint and
# format, mypy on veil.engine and veil.jobs. `.venv/bin/ruff format && .venv/bin/ruff check --fix` fixes most.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --no-cache --check .
.venv/bin/mypy --cache-dir /dev/null
