"""Model sessions: ONNX Runtime (CPU, CUDA when present) or Intel's OpenVINO runtime, behind one small interface.

The detectors only call ``session.get_inputs()[i].name`` and ``session.run(output_names | None, {input: array})``,
which both `onnxruntime.InferenceSession` and `OpenVinoSession` provide.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..settings import engine_settings
from .weights import derived_model

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_CHOICES = ("auto", "cpu", "cuda", "openvino")
_PRECISIONS = ("auto", "f32", "bf16")


def available_providers() -> list[str]:
    """Short names of the execution providers usable here, e.g. ``["cpu", "openvino"]``."""
    installed = set(ort.get_available_providers())
    found = [short for short, full in _PROVIDERS.items() if full in installed]
    if _openvino_installed():
        found.append("openvino")
    return found


def resolve_provider(provider: str | None = None) -> str:
    """The provider `create_session` uses: cpu, cuda or openvino (ValueError when unknown or not installed)."""
    choice = (provider or engine_settings().execution_provider).strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"unknown execution provider {choice!r}; choose one of {', '.join(_CHOICES)}")
    available = available_providers()
    if choice == "auto":
        return "cuda" if "cuda" in available else "openvino" if _native_bf16() else "cpu"
    if choice not in available:
        raise ValueError(
            f"execution provider {choice!r} is not installed here (available: {', '.join(available)})"
            + ("; install the openvino package (x86-64)" if choice == "openvino" else "")
            + ("; install onnxruntime-gpu with a CUDA runtime" if choice == "cuda" else "")
        )
    return choice


def create_session(path: Path, provider: str | None = None):
    """Open an ONNX model. ``provider``: auto|cpu|cuda|openvino, else ``$VEIL_EXECUTION_PROVIDER``, else auto.

    auto = CUDA when available, else OpenVINO in bfloat16 where the CPU computes bfloat16 natively (AMX /
    AVX512-BF16: 1.7x-2.7x faster than ONNX Runtime on the detectors, `bench/bench_runtime.py`), else ONNX
    Runtime on the CPU (OpenVINO in float32 measured no faster than it).
    """
    choice = resolve_provider(provider)
    if choice == "openvino":
        return OpenVinoSession(_model_bytes(Path(path)))
    providers: list = []
    if choice == "cuda":
        providers.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    providers.append("CPUExecutionProvider")
    return ort.InferenceSession(_model_bytes(Path(path)), sess_options=_session_options(), providers=providers)


def describe(provider: str | None = None) -> str:
    """Runtime and precision the detectors run with, e.g. ``onnxruntime 1.20 CPU float32``."""
    choice = resolve_provider(provider)
    if choice == "openvino":
        import openvino as ov

        precision = {"bf16": "bfloat16", "f32": "float32"}[_openvino_precision()]
        return f"openvino {ov.__version__.split('-')[0]} CPU {precision}"
    return f"onnxruntime {ort.__version__} {choice.upper()} float32"


def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@lru_cache(maxsize=1)
def _native_bf16() -> bool:
    """OpenVINO is installed and this CPU computes bfloat16 natively."""
    if not _openvino_installed():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _Input:
    def __init__(self, name: str) -> None:
        self.name = name


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for the CPU, with the `run`/`get_inputs` calls the detectors use.

    Precision (``$VEIL_OPENVINO_PRECISION``): ``auto`` = bfloat16 where the CPU computes it natively (dev-set
    recall unchanged, docs/detection.md), else float32; ``f32`` or ``bf16`` to force one. Each thread gets its own
    inference request (one request is not safe to share).
    """

    def __init__(self, model: bytes) -> None:
        import openvino as ov

        core = ov.Core()
        self._compiled = core.compile_model(
            core.read_model(model, b""),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": _openvino_precision(),
                "INFERENCE_NUM_THREADS": thread_count(),
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self._inputs = [_Input(port.any_name) for port in self._compiled.inputs]
        self._outputs = {port.any_name: port for port in self._compiled.outputs}
        self._local = threading.local()

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer(feed)
        ports = list(self._outputs.values()) if output_names is None else [self._outputs[n] for n in output_names]
        return [np.array(results[port]) for port in ports]  # copies: the request reuses its buffers


def _openvino_precision() -> str:
    choice = engine_settings().openvino_precision
    if choice == "auto":
        return "bf16" if _native_bf16() else "f32"
    return choice


def _model_bytes(path: Path) -> bytes:
    """The model, with weights no longer listed as graph inputs (old exporters, e.g. the stock CenterFace, do that).

    ONNX Runtime treats such weights as overridable inputs and will not constant-fold them or fuse BatchNorm into the
    convolutions; dropping them from the input list keeps the maths identical and made CenterFace ~25% faster here.
    The copy is written once (`weights.derived_model`): loading it needs no ``onnx`` import (~0.6 s a process).
    """
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")

    def make() -> bytes:
        import onnx

        model = onnx.load(str(path))
        initializers = {init.name for init in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        return model.SerializeToString()

    return derived_model(path, "weights-const", make).read_bytes()


def _session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = thread_count()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: stock models trigger harmless per-initializer warnings
    return opts


_threads_here: ContextVar[int | None] = ContextVar("veil_session_threads", default=None)


@contextmanager
def session_threads(count: int) -> Iterator[None]:
    """Sessions opened in this context run on ``count`` threads (photos run side by side, one core each)."""
    token = _threads_here.set(count)
    try:
        yield
    finally:
        _threads_here.reset(token)


def threads_here() -> int | None:
    """The thread count `session_threads` set in this context, else None (the settings decide, `thread_count`)."""
    return _threads_here.get()


def thread_count() -> int:
    """Threads a session opened here runs on: `session_threads`, else the ``ort_threads`` setting, else one per
    physical core."""
    here = threads_here()
    if here is not None:
        return here
    threads = engine_settings().ort_threads
    if threads is not None:
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
