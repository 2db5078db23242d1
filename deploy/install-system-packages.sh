#!/bin/sh
# Installs the Debian packages of deploy/system-packages.txt that are missing (scripts/setup.sh, deploy/Dockerfile).
# A line `a | b` is satisfied by either; the first one the release has is installed. Without root or apt-get it
# names what is missing and exits 0: setup goes on, and `veil doctor` and the tests name what fails.
set -eu
list="$(dirname "$0")/system-packages.txt"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=""
while IFS= read -r line || [ -n "$line" ]; do
  line=$(printf '%s' "${line%%#*}" | tr '|' ' ')
  [ -n "$(printf '%s' "$line" | tr -d ' ')" ] || continue
  found=""
  for pkg in $line; do
    if command -v dpkg-query >/dev/null && installed "$pkg"; then found=$pkg; fi
  done
  [ -n "$found" ] || missing="$missing;$line"
done < "$list"
[ -n "$missing" ] || exit 0
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "setup: install the system packages of $list (missing: $(printf '%s' "${missing#;}" | sed 's/;/, /g'))" >&2
  exit 0
fi
apt-get update -qq
printf '%s\n' "${missing#;}" | tr ';' '\n' | while read -r alternatives; do
  chosen=""
  for pkg in $alternatives; do
    if apt-cache policy "$pkg" 2>/dev/null | grep -q "Candidate: [^(]"; then chosen=$pkg; break; fi
  done
  if [ -z "$chosen" ]; then
    echo "setup: this Debian release has none of: $alternatives" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$chosen" >/dev/null
done
