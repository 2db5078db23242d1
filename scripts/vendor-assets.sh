#!/usr/bin/env bash
# Copy the admin panel's third-party browser files from npm (versions pinned in package.json) into the
# package, where they are committed: nothing is fetched from a CDN or npm at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f node_modules/chart.js/package.json ] || npm install --no-audit --no-fund --loglevel=error
static=src/veil/api/panel/static
cp node_modules/chart.js/dist/chart.umd.min.js "$static/chart.umd.min.js"
cp node_modules/chart.js/LICENSE.md "$static/chart.js.LICENSE.md"
echo "chart.js $(node -p "require('./node_modules/chart.js/package.json').version") -> $static"
