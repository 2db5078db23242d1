#!/usr/bin/env bash
# The image's install steps without a Docker engine: runs deploy/Dockerfile's COPY, ENV and RUN lines in a
# clean Debian root made with debootstrap (bookworm, the base of python:3.11-slim), with Debian's Python 3.11
# in a virtual environment standing in for the base image's Python, then checks what the image runs: the
# archive library loads, and `veil serve` answers /readyz. Needs root, debootstrap and the package
# registries; takes minutes (it downloads every locked package). Usage: sudo bash deploy/try-image.sh [ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-/tmp/veil-image-root}"
[ -x "$root/bin/sh" ] || debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
cp /etc/resolv.conf "$root/etc/resolv.conf"
# this machine's CA certificates (a proxy that inspects TLS signs with its own), for pip's downloads
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/build-ca.crt"
in_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_CERT=/etc/build-ca.crt SSL_CERT_FILE=/etc/build-ca.crt "$@"; }
# the base image: python:3.11-slim's Python (here Debian's, in a venv as pip's PEP 668 asks) and the
# required-priority packages a slim image has beyond minbase (useradd)
in_root sh -c 'command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates passwd >/dev/null; }
  [ -x /opt/python/bin/pip ] || python3 -m venv /opt/python
  userdel veil 2>/dev/null; rm -rf /app /scratch; mkdir /app'
envs=()
while read -r word rest; do
  case "$word" in
    COPY) read -r -a parts <<< "$rest"; dest="${parts[-1]}"; unset 'parts[-1]'
          mkdir -p "$root/app/$dest"
          for src in "${parts[@]}"; do  # as Docker does: a folder's contents, a file itself
            if [ -d "$src" ]; then cp -r "$src/." "$root/app/$dest/"; else cp "$src" "$root/app/$dest/"; fi
          done ;;
    ENV) envs+=($rest) ;;
    RUN) echo "--- RUN $rest"; in_root "${envs[@]}" sh -c "cd /app && $rest" ;;
  esac
done < deploy/Dockerfile
echo "--- checks"
in_root "${envs[@]}" python -c "import libarchive, veil.jobs.archive; print('libarchive', libarchive.__file__)"
port=18765
user=(chroot --userspec=10001:10001 "$root" /usr/bin/env -i HOME=/scratch PATH=/opt/python/bin:/usr/bin:/bin
      "${envs[@]}")  # USER veil
"${user[@]}" sh -c "cd /app && exec veil serve --port $port" > "$root/serve.log" 2>&1 &
server=$!  # chroot, which becomes veil serve (each one execs the next)
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null && break
  sleep 1
done
echo
key=$("${user[@]}" veil keys create --credits 10 | tail -1)
# an archive of two photos uploaded and priced, as a client would (the image could not price one without libarchive)
"${user[@]}" python - "$port" "$key" <<'PY'
import io, sys, time, zipfile
import requests
from PIL import Image
port, key = sys.argv[1:]
api, photos = f"http://127.0.0.1:{port}/v1", io.BytesIO()
with zipfile.ZipFile(photos, "w") as zf:
    for n in range(2):
        image = io.BytesIO()
        Image.new("RGB", (64, 48), (40 * n, 90, 160)).save(image, "JPEG")
        zf.writestr(f"{n}.jpg", image.getvalue())
body = photos.getvalue()
session = requests.post(f"{api}/create_upload_session", headers={"access_token": key}, timeout=30,
                        json={"file_name": "two.zip", "file_size": len(body)}).json()
requests.put(session["session_uri"], data=body, headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).raise_for_status()
for _ in range(120):
    report = requests.get(f"{api}/job_result/{session['job_id']}", headers={"access_token": key}, timeout=30).json()
    if report["state"] != "uploaded" and report["state"] != "created":
        break
    time.sleep(0.5)
assert report["state"] == "awaiting_approval" and report["job_total_credit_cost"] == 2, report
print("priced:", report["job_total_credit_cost"], "credits for", report["file_name"] if "file_name" in report else "two.zip")
PY
echo "try-image: ok"
