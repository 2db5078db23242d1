"""Cancel races: a worker picks a one-image job up and the client cancels as soon as it sees the job
running (issue 9, finding 8). Prints how the rounds ended: cancelled jobs must be charged only for
files that were processed (0 here: the image is never finished when the cancel is seen in time).
The engine is replaced by a copy that takes 50 ms, so no models are needed. Not a test: figures only.

    .venv/bin/python bench/cancel_race.py [--rounds 25]
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

import veil.engine.anonymize
from veil.jobs.keys import create_key, get_key
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER, JobConflict, build_service
from veil.settings import Settings


def _copy(src, dst, config, progress=None, **_) -> None:
    time.sleep(0.05)
    Path(dst).write_bytes(Path(src).read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    rounds = parser.parse_args().rounds
    veil.engine.anonymize.anonymize = _copy
    out = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(out, format="JPEG")
    data = out.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        svc = build_service(
            Settings(data_dir=Path(tmp), worker="none", storage_key=base64.b64encode(b"k" * 32).decode())
        )
        endings: Counter[str] = Counter()
        for _ in range(rounds):
            _, key = create_key(svc.db, 10)
            job = svc.create_job(key.id, "x.jpg", len(data)).job
            svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
            svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
            while svc.approve(key.id, job.id) == "waiting":
                time.sleep(0.01)
            worker = threading.Thread(target=process_job, args=(job.id, svc))
            worker.start()
            while svc.get_job(job.id).status == "queued":
                time.sleep(0.0005)
            try:
                svc.cancel(key.id, job.id)
            except JobConflict:  # already finished
                pass
            worker.join()
            job = svc.get_job(job.id)
            done = sum(t.status == "completed" for t in job.tasks)
            endings[f"{job.status}, {done} file(s) processed, charged {10 - get_key(svc.db, key.id).credits}"] += 1
        svc.close()
    for ending, count in sorted(endings.items()):
        print(f"{count:4d} of {rounds}  {ending}")


if __name__ == "__main__":
    main()
