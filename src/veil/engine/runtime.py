"""ONNX Runtime sessions with a selectable execution provider (CPU default, CUDA when present, OpenVINO on request)."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_CHOICES = ("auto", *_PROVIDERS)


def available_providers() -> list[str]:
    """Short names of the execution providers usable here, e.g. ``["cuda", "cpu"]``."""
    installed = set(ort.get_available_providers())
    return [short for short, full in _PROVIDERS.items() if full in installed]


def create_session(path: Path, provider: str | None = None) -> ort.InferenceSession:
    """Open an ONNX model. ``provider``: auto|cpu|cuda|openvino, else ``$VEIL_EXECUTION_PROVIDER``, else auto.

    auto = CUDA when available, otherwise CPU. OpenVINO is used only when asked for, in fp32 (its bf16 default is
    slower on CPUs without AMX and changes scores).
    """
    choice = (provider or os.environ.get("VEIL_EXECUTION_PROVIDER") or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"unknown execution provider {choice!r}; choose one of {', '.join(_CHOICES)}")
    available = available_providers()
    if choice == "auto":
        choice = "cuda" if "cuda" in available else "cpu"
    elif choice not in available:
        raise ValueError(
            f"execution provider {choice!r} is not installed here (available: {', '.join(available)})"
            + ("; install onnxruntime-openvino" if choice == "openvino" else "")
            + ("; install onnxruntime-gpu with a CUDA runtime" if choice == "cuda" else "")
        )
    providers: list = []
    if choice == "cuda":
        providers.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    elif choice == "openvino":
        providers.append(("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}))
    providers.append("CPUExecutionProvider")
    return ort.InferenceSession(_model_bytes(Path(path)), sess_options=_session_options(), providers=providers)


def _model_bytes(path: Path) -> bytes:
    """The model, with weights no longer listed as graph inputs (old exporters, e.g. the stock CenterFace, do that).

    ONNX Runtime treats such weights as overridable inputs and will not constant-fold them or fuse BatchNorm into the
    convolutions; dropping them from the input list keeps the maths identical and made CenterFace ~25% faster here.
    """
    import onnx

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX model not found: {path}") from None
    initializers = {init.name for init in model.graph.initializer}
    if any(i.name in initializers for i in model.graph.input):
        inputs = [i for i in model.graph.input if i.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return model.SerializeToString()


def _session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = _thread_count()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: stock models trigger harmless per-initializer warnings
    return opts


def _thread_count() -> int:
    env = os.environ.get("VEIL_ORT_THREADS", "").strip()
    if env:
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"VEIL_ORT_THREADS must be an integer, got {env!r}") from None
        if threads < 0:
            raise ValueError(f"VEIL_ORT_THREADS must be >= 0, got {threads}")
        return threads  # 0 lets ONNX Runtime decide
    return physical_cores()


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads do not help convolution-heavy inference)."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for cpu in usable:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))
