"""Video speed: Veil vs deface 1.5.0 vs the FFmpeg decode + libx264 floor, on the same clip.

    python bench/bench_video.py CLIP [--runs 3] [--config '{"enable_lp": true, "lp_track": true}']
                                     [--skip-deface] [--deface-venv /tmp/veil-bench/deface-venv]

Runs, one after the other, each `--runs` times (the median is printed):
  * Veil:    `veil anonymize CLIP -o DIR` with the given model_config (default: seed defaults plus
             `enable_lp` and `lp_track`, the acceptance setting);
  * deface:  `deface CLIP` with its defaults, and with `--scale 640x360` (installed with pip into a
             side virtual environment if missing: `pip install deface==1.5.0`);
  * floor:   decode CLIP and encode it with libx264 at Veil's preset and CRF, nothing else (PyAV,
             i.e. the same FFmpeg libraries Veil uses).
Frames per second are whole-command figures (start-up included) = frames / wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
DEFACE_VERSION = "1.5.0"

_FLOOR = """
import sys, av
src, dst, preset, crf = sys.argv[1:5]
with av.open(src) as inp, av.open(dst, "w") as out:
    v = inp.streams.video[0]
    v.thread_type = "AUTO"
    s = out.add_stream("libx264", rate=v.average_rate)
    s.width, s.height, s.pix_fmt = v.codec_context.width, v.codec_context.height, "yuv420p"
    s.time_base = s.codec_context.time_base = v.time_base
    s.codec_context.options = {"crf": crf, "preset": preset}
    for frame in inp.decode(v):
        out.mux(s.encode(frame))
    out.mux(s.encode(None))
"""


def frame_count(clip: Path) -> int:
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        return s.frames or sum(1 for _ in c.demux(s) if _.size)


def ensure_deface(venv: Path) -> Path:
    exe = venv / "bin" / "deface"
    if exe.exists():
        return exe
    print(f"installing deface=={DEFACE_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"deface=={DEFACE_VERSION}"], check=True)
    return exe


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def measure(tools: dict[str, list[str]], frames: int, runs: int) -> dict[str, tuple[float, float]]:
    """{name: (frames per second, CPU ms per frame)}, medians; tools run round-robin so that a
    change in the machine's other load does not favour one of them."""
    walls: dict[str, list[float]] = {name: [] for name in tools}
    cpus: dict[str, list[float]] = {name: [] for name in tools}
    for run in range(runs):
        for name, cmd in tools.items():
            wall, cpu = timed(cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"  run {run + 1} {name:<12} {frames / wall:6.2f} fps ({wall:.1f} s, "
                  f"{1000 * cpu / frames:.0f} CPU ms/frame, load {os.getloadavg()[0]:.1f})", flush=True)
    return {name: (frames / statistics.median(walls[name]), 1000 * statistics.median(cpus[name]) / frames)
            for name in tools}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", default='{"enable_lp": true, "lp_track": true}', help="Veil model_config JSON")
    ap.add_argument("--skip-deface", action="store_true")
    ap.add_argument("--deface-venv", type=Path, default=Path(tempfile.gettempdir()) / "veil-bench" / "deface-venv")
    args = ap.parse_args()

    from veil.engine.config import ModelConfig
    from veil.engine.video import _PRESET

    config = ModelConfig(**json.loads(args.config))
    frames = frame_count(args.clip)
    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    veil = shutil.which("veil", path=str(Path(sys.executable).parent)) or "veil"
    print(f"clip {args.clip} ({frames} frames), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"median of {args.runs} runs", flush=True)
    tools = {
        "veil": [veil, "anonymize", str(args.clip), "-o", str(work / "veil"), "--config", config.model_dump_json()],
        "floor": [sys.executable, "-c", _FLOOR, str(args.clip), str(work / "floor.mp4"), _PRESET,
                  str(config.video_crf)],
    }
    if not args.skip_deface:
        deface = str(ensure_deface(args.deface_venv))
        tools["deface"] = [deface, str(args.clip), "-o", str(work / "deface.mp4")]
        tools["deface_640"] = [deface, str(args.clip), "-o", str(work / "deface640.mp4"), "--scale", "640x360"]
    print(f"floor = decode + libx264 preset {_PRESET}, CRF {config.video_crf}; veil config {config.model_dump_json()}")
    try:
        results = measure(tools, frames, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nresults (median of {args.runs}; CPU ms/frame is less sensitive to other load than fps):")
    for name, (fps, cpu) in results.items():
        print(f"  {name:<12} {fps:7.2f} fps  {cpu:6.0f} CPU ms/frame")
    v, v_cpu = results["veil"]
    print(f"  veil / floor       {v / results['floor'][0]:.2f}x fps   {results['floor'][1] / v_cpu:.2f}x by CPU time")
    if "deface" in results:
        print(f"  veil / deface      {v / results['deface'][0]:.2f}x fps   {results['deface'][1] / v_cpu:.2f}x by CPU time")
        print(f"  veil / deface 640  {v / results['deface_640'][0]:.2f}x fps   "
              f"{results['deface_640'][1] / v_cpu:.2f}x by CPU time")


if __name__ == "__main__":
    main()
