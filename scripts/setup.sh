#!/usr/bin/env bash
# Creates .venv and installs Veil and veil-client (client/) from the lock file, every distribution checked
# against its hashes (requirements.lock; with "test" as $1, requirements-test.lock, which adds the test tools;
# refresh them with scripts/lock.sh), the system packages of deploy/system-packages.txt, and the models.
# Idempotent, and reaches no package index when nothing is missing or changed since its last run
# (.venv/.veil-setup records the lock, pyproject.toml and client/pyproject.toml it installed).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") lock=requirements.lock ;;
  test) lock=requirements-test.lock ;;
  *) echo "setup: unknown extras '$1' (none: the service; test: the service and the test tools)" >&2; exit 2 ;;
esac
sh deploy/install-system-packages.sh
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp="$(cat "$lock" pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1) $lock"
if [ "$(cat .venv/.veil-setup 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c "import veil, veil_client" 2>/dev/null
then
  pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
  "${pip[@]}" install --require-hashes -r "$lock"
  # the two distributions of this repository (client/ first: the main package depends on it), their
  # dependencies and build backend (setuptools) all installed from the lock above
  "${pip[@]}" install --no-deps --no-build-isolation -e ./client -e .
  if ! problems=$(.venv/bin/python -m pip check --disable-pip-version-check); then  # e.g. a dependency not locked
    printf '%s\nsetup: %s does not meet pyproject.toml: refresh it with bash scripts/lock.sh\n' "$problems" "$lock" >&2
    exit 1
  fi
  echo "$stamp" > .venv/.veil-setup
fi
.venv/bin/veil models install
