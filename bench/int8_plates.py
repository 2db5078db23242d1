"""Would an int8 plate model pay? Static quantization (ONNX Runtime, QDQ, per-channel) of the plate
detector, calibrated on the dev plate photos, against float32: recall at IoU 0.5 and latency.

    python bench/int8_plates.py [--method minmax|percentile] [--data ../shared/data]

Convolutions are quantized except the first and the six output convolutions of the detection head
(kept float32, as are the box decoding and the SiLU activations); weights 7-bit (reduce_range: u8s8
without VNNI saturates otherwise). Prints the CPU, recall of both models per dev plate set (raw
scores above 0.05 / 0.3, input 1280 px), and the median latency of each on a 1280x736 input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_video import cpu_line  # noqa: E402
from veil.engine import runtime  # noqa: E402
from veil.engine.plates import PlateYolo  # noqa: E402
from veil.engine.weights import model_path  # noqa: E402

SETS = ("ro_dashcam_plates", "openalpr_plates")
CANVAS = (1280, 960)  # calibration inputs share one shape (the histogram calibrators need it)


def letterbox(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    r = min(CANVAS[0] / w, CANVAS[1] / h)
    nw, nh = round(w * r), round(h * r)
    canvas = np.full((CANVAS[1], CANVAS[0], 3), 114, np.uint8)
    top, left = (CANVAS[1] - nh) // 2, (CANVAS[0] - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh))
    return canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)


def quantize(src: Path, dst: Path, images: list[Path], method: str) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load_from_string(runtime._model_bytes(src))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    keep_float = [convs[0].name] + [n.name for n in convs if "Sigmoid" not in consumers.get(n.output[0], [])]
    clean = dst.with_suffix(".f32.onnx")
    onnx.save(model, str(clean))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.todo = iter(images)

        def get_next(self):
            path = next(self.todo, None)
            return (
                None if path is None else {"images": letterbox(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))}
            )

    quantize_static(
        str(clean),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=keep_float,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
    )


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def detector(path: Path) -> PlateYolo:
    yolo = PlateYolo.__new__(PlateYolo)
    yolo.session = runtime.ort.InferenceSession(
        str(path), runtime._session_options(), providers=["CPUExecutionProvider"]
    )
    yolo.input_name = "images"
    return yolo


def recall(yolo: PlateYolo, data: Path, name: str) -> dict[float, float]:
    items = json.loads((data / name / "labels.json").read_text())["items"]
    found, total = {0.05: 0, 0.3: 0}, 0
    for item in items:
        truth = np.array(item["plates"], np.float32).reshape(-1, 4)
        if not len(truth):
            continue
        image = cv2.cvtColor(cv2.imread(str(data / name / item["file"])), cv2.COLOR_BGR2RGB)
        boxes, scores = yolo(image, size=1280)
        total += len(truth)
        for floor in found:
            kept = boxes[scores > floor]
            if len(kept):
                found[floor] += int((iou(truth, kept).max(axis=1) >= 0.5).sum())
    return {floor: n / total for floor, n in found.items()}


def latency(yolos: dict[str, PlateYolo], runs: int = 7) -> dict[str, float]:
    x = np.random.default_rng(0).random((1, 3, 736, 1280), np.float32)
    times: dict[str, list[float]] = {name: [] for name in yolos}
    for _ in range(runs + 1):  # interleaved; the first round warms up
        for name, yolo in yolos.items():
            start = time.perf_counter()
            yolo.session.run(None, {"images": x})
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("minmax", "percentile"), default="percentile")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = ap.parse_args()
    print(cpu_line())
    images = [p for name in SETS for p in sorted((args.data / name / "images").iterdir())]
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "plates_int8.onnx"
        quantize(model_path("plates"), int8, images[::2], args.method)
        yolos = {"float32": detector(int8.with_suffix(".f32.onnx")), "int8": detector(int8)}
        for name in SETS:
            for label, yolo in yolos.items():
                r = recall(yolo, args.data, name)
                print(f"{name:20s} {label:8s} recall@.5 (raw > 0.05) {r[0.05]:.3f}  (raw > 0.3) {r[0.3]:.3f}")
        ms = latency(yolos)
        print(
            f"latency 1280x736: float32 {ms['float32'] * 1000:.0f} ms, int8 {ms['int8'] * 1000:.0f} ms "
            f"({ms['float32'] / ms['int8']:.2f}x)"
        )


if __name__ == "__main__":
    main()
