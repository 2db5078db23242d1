"""Video speed: Veil vs deface 1.5.0 vs the FFmpeg decode + libx264 floor, on the same clip.

    python bench/bench_video.py CLIP [--runs 3] [--config '{"enable_lp": true, "lp_track": true}']
                                     [--skip-deface] [--deface-venv /tmp/veil-bench/deface-venv]

Prints the CPU (model; AVX2, AVX-512, AMX) and the runtime and precision the detectors use
(`VEIL_EXECUTION_PROVIDER`), then runs, round-robin, each `--runs` times (the median is printed):
  * Veil:    `veil anonymize CLIP -o DIR` with each of the configs in `CONFIGS` (seed defaults; plates
             tracked; plates untracked; the seed's sample config, slicing on), or only `--config`;
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
CONFIGS = {
    "default": {},
    "lp+track": {"enable_lp": True, "lp_track": True},
    "lp": {"enable_lp": True},
    "seed_sample": {"enable_lp": True, "lp_track": True, "slicing": True},
}

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


def cpu_line() -> str:
    """CPU model and the vector extensions that matter for inference speed."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    has = {
        "AVX2": "avx2" in flags,
        "AVX-512": "avx512f" in flags,
        "AVX512-BF16": "avx512_bf16" in flags,
        "AMX": "amx_tile" in flags,
    }
    return f"{model}, {os.cpu_count()} CPUs; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in has.items())


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


def measure(
    tools: dict[str, list[str]],
    count: int,
    runs: int,
    unit: str = "frame",
    rate: str = "fps",
    label: str = "run",
    rotate: bool = False,
) -> dict[str, tuple[float, float]]:
    """{name: (`count` per second, CPU ms per `unit`)}, medians; tools run round-robin so that a change in the
    machine's other load does not favour one of them (with `rotate`, each run also starts with the next tool)."""
    walls: dict[str, list[float]] = {name: [] for name in tools}
    cpus: dict[str, list[float]] = {name: [] for name in tools}
    order = list(tools)
    for run in range(runs):
        start = run % len(order) if rotate else 0
        for name in order[start:] + order[:start]:
            wall, cpu = timed(tools[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(
                f"  {label} {run + 1} {name:<18} {count / wall:6.2f} {rate} ({wall:.1f} s, "
                f"{1000 * cpu / count:.0f} CPU ms/{unit}, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return {
        name: (count / statistics.median(walls[name]), 1000 * statistics.median(cpus[name]) / count) for name in tools
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", default=None, help="only this Veil model_config JSON (default: all of CONFIGS)")
    ap.add_argument("--skip-deface", action="store_true")
    ap.add_argument("--deface-venv", type=Path, default=Path(tempfile.gettempdir()) / "veil-bench" / "deface-venv")
    args = ap.parse_args()

    from veil.engine.config import ModelConfig
    from veil.engine.runtime import describe
    from veil.settings import engine_settings

    X264_PRESET = engine_settings().x264_preset

    configs = {"veil": json.loads(args.config)} if args.config else {f"veil {k}": v for k, v in CONFIGS.items()}
    frames = frame_count(args.clip)
    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    veil = shutil.which("veil", path=str(Path(sys.executable).parent)) or "veil"
    print(f"cpu: {cpu_line()}")
    print(f"runtime: {describe()} (VEIL_EXECUTION_PROVIDER={os.environ.get('VEIL_EXECUTION_PROVIDER', 'auto')})")
    print(f"clip {args.clip} ({frames} frames), load {os.getloadavg()[0]:.1f}, median of {args.runs} runs", flush=True)
    crf = str(ModelConfig().video_crf)
    tools = {
        name: [
            veil,
            "anonymize",
            str(args.clip),
            "-o",
            str(work / name.replace(" ", "_")),
            "--config",
            ModelConfig(**cfg).model_dump_json(),
        ]
        for name, cfg in configs.items()
    }
    tools["floor"] = [sys.executable, "-c", _FLOOR, str(args.clip), str(work / "floor.mp4"), X264_PRESET, crf]
    if not args.skip_deface:
        deface = str(ensure_deface(args.deface_venv))
        tools["deface"] = [deface, str(args.clip), "-o", str(work / "deface.mp4")]
        tools["deface_640"] = [deface, str(args.clip), "-o", str(work / "deface640.mp4"), "--scale", "640x360"]
    print(
        f"floor = decode + libx264 preset {X264_PRESET}, CRF {crf}; configs: "
        + "; ".join(f"{name} {json.dumps(cfg)}" for name, cfg in configs.items())
    )
    try:
        results = measure(tools, frames, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nresults (median of {args.runs}; CPU ms/frame is less sensitive to other load than fps):")
    for name, (fps, cpu) in results.items():
        print(f"  {name:<18} {fps:7.2f} fps  {cpu:6.0f} CPU ms/frame")
    floor, floor_cpu = results["floor"]
    for name in configs:
        v, v_cpu = results[name]
        print(f"  {name:<18} / floor       {v / floor:.2f}x fps   {floor_cpu / v_cpu:.2f}x by CPU time")
        if "deface" in results:
            print(
                f"  {name:<18} / deface      {v / results['deface'][0]:.2f}x fps   "
                f"{results['deface'][1] / v_cpu:.2f}x by CPU time"
            )
            print(
                f"  {name:<18} / deface 640  {v / results['deface_640'][0]:.2f}x fps   "
                f"{results['deface_640'][1] / v_cpu:.2f}x by CPU time"
            )


if __name__ == "__main__":
    main()
