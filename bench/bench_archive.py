"""An archive job of photos on a worker: one photo at a time (the engine on every core) against photos side by
side (one core each, `veil.jobs.runner._Ahead`), in the same process, interleaved rounds.

    python bench/bench_archive.py [--sets openalpr_plates] [--rounds 3] [--config '{"enable_lp": true}']
        [--data ../shared/data]

Each round zips the set's photos, submits the archive to a service on a temporary data directory (SQLite, local
blob store) and times `process_job` on it (expanding, the engine, storing outputs and documents). "one at a
time" is the earlier behaviour (ONNX Runtime sessions on every core, ``ort_threads`` set to the core count).
Prints the CPU, the runtime, each run, the medians and the ratio.

Measured (AMD EPYC, 2 CPUs, ``VEIL_EXECUTION_PROVIDER=cpu``, medians of 3, openalpr_plates): one at a time
2.27 images/s, side by side 2.82 images/s: 1.24x.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_video import cpu_line  # noqa: E402
from eval_detection import load_sets  # noqa: E402


def run_once(doc: dict, config: dict, side_by_side: bool) -> float:
    from veil.engine.runtime import physical_cores
    from veil.jobs.keys import create_key
    from veil.jobs.runner import process_job
    from veil.jobs.service import INPUT_CONTAINER, build_service
    from veil.settings import Settings, override_engine_settings

    override_engine_settings(ort_threads=None if side_by_side else physical_cores())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for item in doc["items"]:
            zf.write(doc["dir"] / item["file"], Path(item["file"]).name)
    data = out.getvalue()
    with tempfile.TemporaryDirectory(prefix="veil-bench-archive-") as tmp:
        settings = Settings(data_dir=Path(tmp), worker="none", storage_key=base64.b64encode(b"k" * 32).decode())
        svc = build_service(settings)
        try:
            _, key = create_key(svc.db, 10**6)
            job = svc.create_job(key.id, "photos.zip", len(data), model_config=config).job
            svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
            svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
            svc.approve(key.id, job.id)
            started = time.perf_counter()
            process_job(job.id, svc)
            seconds = time.perf_counter() - started
            assert svc.get_job(job.id).status == "completed", svc.report(svc.get_job(job.id))
        finally:
            svc.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", default="openalpr_plates")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default='{"enable_lp": true}')
    args = parser.parse_args()
    config = json.loads(args.config)
    print(f"cpu: {cpu_line()}")
    print(f"runtime: VEIL_EXECUTION_PROVIDER={os.environ.get('VEIL_EXECUTION_PROVIDER', '(auto)')}; config {config}")
    for doc in load_sets(args.data, args.sets.split(",")):
        photos = len(doc["items"])
        times: dict[str, list[float]] = {"one at a time": [], "side by side": []}
        for round_ in range(args.rounds):
            order = list(times) if round_ % 2 == 0 else list(reversed(times))
            for mode in order:
                seconds = run_once(doc, config, mode == "side by side")
                times[mode].append(seconds)
                print(f"  {doc['set']} round {round_ + 1} {mode:<13} {photos / seconds:5.2f} images/s", flush=True)
        rates = {mode: photos / statistics.median(values) for mode, values in times.items()}
        print(
            f"{doc['set']}: one at a time {rates['one at a time']:.2f} images/s, side by side "
            f"{rates['side by side']:.2f} images/s: {rates['side by side'] / rates['one at a time']:.2f}x "
            f"(medians of {args.rounds})"
        )


if __name__ == "__main__":
    main()
