"""Commit-to-priced latency: from the moment Put Block List answers 201 until `job_result` shows the
cost (the "awaiting approval" callback goes out at the same moment). Three ways the API learns of an
upload, each against a real `veil serve` app (uvicorn on loopback, lifespan on) and a real store:

- `embedded`: the embedded store's own endpoint reports the commit;
- `polling`: Azurite (no events), the API's sweeper polls every VEIL_UPLOAD_POLL_SECONDS;
- `events`: Azurite, and the Event Grid webhook receives the documented BlobCreated event right after
  the commit (Event Grid's own delivery delay, which cannot be measured here, comes on top).

    .venv/bin/python bench/bench_upload_latency.py [--runs 10] [--poll-seconds 2]

Not a test: figures only (median and max over the runs, in milliseconds). Each upload starts after a
random pause, so commits fall at every phase of the poll timer.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _service_helpers import jpeg_bytes, new_key, seed_upload, settings_for  # noqa: E402
from veil.api.app import create_app  # noqa: E402
from veil.storage.testing import azurite, free_port, serve_app  # noqa: E402


def _event(job_id: str, size: int) -> list[dict]:
    return [
        {
            "topic": "/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/a",
            "subject": f"/blobServices/default/containers/uploads/blobs/{job_id}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": "2026-12-02T00:00:00Z",
            "id": job_id,
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {
                "api": "PutBlockList",
                "eTag": f'"0x{job_id[:8].upper()}"',
                "contentLength": size,
                "blobType": "BlockBlob",
                "contentType": "application/octet-stream",
                "url": f"https://a.blob.core.windows.net/uploads/{job_id}",
                "sequencer": "1",
            },
        }
    ]


def measure(mode: str, runs: int, poll_seconds: float, connection_string: str | None) -> list[float]:
    port = free_port()
    extra = {} if mode == "embedded" else {"storage_backend": "azure", "azure_connection_string": connection_string}
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(
            Path(tmp),
            port=port,
            upload_poll_seconds=poll_seconds if mode == "polling" else 0,
            events_secret="bench",
            **extra,
        )
        app = create_app(settings)
        with serve_app(app, port, lifespan="on") as base, httpx.Client(timeout=30) as http:
            key = new_key(app.state.service, credits=10_000)
            figures = []
            for n in range(runs):
                time.sleep(random.uniform(0, poll_seconds))  # commits at every phase of the poll timer
                data = jpeg_bytes(320, 240, seed=n)
                r = http.post(
                    f"{base}/v1/create_upload_session",
                    headers={"access_token": key},
                    json={"file_name": "p.jpg", "file_size": len(data), "model": "blur"},
                )
                uri, job_id = r.json()["session_uri"], r.json()["job_id"]
                seed_upload(http, uri, data)
                committed = time.perf_counter()
                if mode == "events":
                    hook = http.post(
                        f"{base}/events/blob-created?secret=bench", content=json.dumps(_event(job_id, len(data)))
                    )
                    assert hook.status_code == 200, hook.text
                while (
                    http.get(f"{base}/v1/job_result/{job_id}", headers={"access_token": key}).json()[
                        "job_total_credit_cost"
                    ]
                    is None
                ):
                    time.sleep(0.005)
                figures.append((time.perf_counter() - committed) * 1000)
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with azurite() as connection_string:
        for mode in ("embedded", "polling", "events"):
            ms = measure(mode, args.runs, args.poll_seconds, connection_string)
            label = f"{mode} (poll every {args.poll_seconds:g} s)" if mode == "polling" else mode
            print(
                f"{label:<28} commit-to-priced: median {statistics.median(ms):7.0f} ms   max {max(ms):7.0f} ms"
                f"   ({args.runs} uploads)"
            )


if __name__ == "__main__":
    main()
