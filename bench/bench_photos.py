"""Photo speed: `veil anonymize` against deface 1.5.0 (and, optionally, an earlier commit's Veil) on the dev photos.

    .venv/bin/python bench/bench_photos.py [--sets facemask_faces,openalpr_plates] [--rounds 3]
        [--config '{"enable_lp": true}'] [--baseline REF] [--tree REF] [--skip-deface]
        [--deface-venv /tmp/veil-bench/deface-venv] [--data ../shared/data]

Per set, the photos are copied into a temporary folder and each tool anonymizes all of them in one
command, as a user with a folder of photos runs it:

  * veil:     `python -m veil anonymize PHOTOS... -o DIR --config CONFIG` (default config: the seed's
              defaults plus plates, ``{"enable_lp": true}``), the working tree's ``src``;
  * baseline: the same with ``src/veil`` of ``--baseline REF`` (exported with ``git archive``; ``--tree REF``
              likewise replaces the working tree in the veil row);
  * deface:   `deface PHOTOS...` with its defaults (faces only; outputs beside the copies), installed
              with pip into a side virtual environment if missing, with ONNX Runtime so that both use
              the same runtime (`bench_video.ensure_deface`).

Rounds are interleaved (the order rotates each round) so slow spells of a shared machine fall on every
tool. images/s is a whole-command figure (start-up and model loading included) = photos / wall seconds;
CPU ms/image (the command's user + system time) is less sensitive to other load. Prints the CPU, the
runtime (`VEIL_EXECUTION_PROVIDER`; deface picks ONNX Runtime's CPU provider itself), each run, the
medians and the ratios against deface.

Measured (ONNX Runtime float32 ``VEIL_EXECUTION_PROVIDER=cpu``, 2 CPUs, medians of 3): AMD EPYC, ``--baseline
407bed8`` (before the face views were sized from the native view and the 2x view kept to smaller faces):
facemask_faces Veil 2.45 images/s (before 1.80), deface 3.60: 0.68x deface (before 0.50x); openalpr_plates Veil
3.13 (before 3.05), deface 7.12: 0.44x (before 0.43x). docs/benchmarks.md has the history and what is left.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_video import cpu_line, ensure_deface, measure  # noqa: E402
from eval_detection import load_sets  # noqa: E402

DEFAULT_SETS = "facemask_faces,openalpr_plates"


def export(ref: str, target: Path) -> Path:
    """``src/veil`` of ``ref`` under ``target``; returns the folder to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src/veil"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def copy_photos(doc: dict, folder: Path) -> list[str]:
    """The set's photos copied into ``folder`` (deface writes its outputs beside its inputs)."""
    folder.mkdir(parents=True)
    paths = []
    for item in doc["items"]:
        target = folder / Path(item["file"]).name
        shutil.copyfile(doc["dir"] / item["file"], target)
        paths.append(str(target))
    return paths


def veil_command(src: Path, photos: list[str], out: Path, config: dict) -> list[str]:
    # The tree goes first on sys.path, before the path the venv's editable install adds.
    launcher = f"import sys; sys.path.insert(0, {str(src)!r}); from veil.cli import main; sys.argv[0] = 'veil'; main()"
    return [sys.executable, "-c", launcher, "anonymize", *photos, "-o", str(out), "--config", json.dumps(config)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", default=DEFAULT_SETS, help=f"comma-separated set names (default: {DEFAULT_SETS})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--config", default='{"enable_lp": true}', help="Veil's ModelConfig JSON (default: seed defaults + plates)"
    )
    parser.add_argument("--baseline", help="also time the Veil of this git commit")
    parser.add_argument("--tree", help="time this git commit as 'veil' instead of the working tree")
    parser.add_argument("--skip-deface", action="store_true")
    parser.add_argument("--deface-venv", type=Path, default=Path(tempfile.gettempdir()) / "veil-bench" / "deface-venv")
    args = parser.parse_args()
    docs = load_sets(args.data, args.sets.split(","))
    if not docs:
        sys.exit(f"no sets {args.sets} under {args.data}")
    config = json.loads(args.config)
    deface = None if args.skip_deface else str(ensure_deface(args.deface_venv))
    print(f"cpu: {cpu_line()}")
    print(
        f"runtime: VEIL_EXECUTION_PROVIDER={os.environ.get('VEIL_EXECUTION_PROVIDER', '(auto)')}; "
        f"veil config {json.dumps(config)}; {args.rounds} rounds, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="veil-bench-photos-") as tmp:
        work = Path(tmp)
        trees = {"veil": export(args.tree, work / "tree") if args.tree else REPO / "src"}
        if args.baseline:
            trees["baseline"] = export(args.baseline, work / "baseline")
        for doc in docs:
            photos = copy_photos(doc, work / doc["set"] / "in")
            tools = {name: veil_command(src, photos, work / doc["set"] / name, config) for name, src in trees.items()}
            if deface:
                tools["deface"] = [deface, *photos]
            results[doc["set"]] = (
                len(photos),
                measure(tools, len(photos), args.rounds, "image", "images/s", f"{doc['set']} round", rotate=True),
            )
    print(f"\nmedians of {args.rounds} runs (whole commands, start-up included):")
    for name, (_, rows) in results.items():
        for tool, (rate, cpu) in rows.items():
            line = f"  {name:<18} {tool:<9} {rate:6.2f} images/s {cpu:6.0f} CPU ms/image"
            if tool != "deface" and "deface" in rows:
                line += (
                    f"   {rate / rows['deface'][0]:.2f}x deface by images/s, {rows['deface'][1] / cpu:.2f}x by CPU time"
                )
            print(line)


if __name__ == "__main__":
    main()
