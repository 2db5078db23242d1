"""Convert an ultralytics YOLOv8 detection checkpoint (``.pt``) to ONNX without torch or ultralytics.

A ``.pt`` file is a zip holding a pickle (``<prefix>/data.pkl``) and raw tensor storages (``<prefix>/data/<key>``).
The pickle is read with a restricted unpickler: torch/ultralytics classes become inert :class:`Stub` objects that only
record their state, tensors become numpy arrays, and any other global (``os.system``, ``builtins.eval`` ...) is refused,
so loading never runs code from the file. The graph is then rebuilt from the checkpoint's own module list (each
layer's ``f`` = input indices) with the ``onnx`` helper API: Conv+BN fused in numpy, SiLU, C2f, SPPF, Upsample,
Concat and the Detect head with DFL and in-graph anchors, so height and width stay dynamic (multiples of 32).

Output ``[batch, 4 + nc, N]``: cx, cy, w, h in input pixels, then per-class sigmoid probabilities.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PRODUCER = "veil.yolo_export"


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The checkpoint's pickle references something outside the allow-list."""


class Stub:
    """Inert stand-in for a torch/ultralytics class: records constructor args and pickled state, runs nothing."""

    qualname = "Stub"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    @property
    def type_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def modules(self) -> dict[str, Any]:
        return self.__dict__.get("_modules", {})

    def param(self, name: str) -> np.ndarray | None:
        for key in ("_parameters", "_buffers"):
            value = self.__dict__.get(key, {}).get(name)
            if value is not None:
                return value
        return None

    def required(self, name: str) -> np.ndarray:
        """A parameter or buffer the layer cannot do without; ValueError (an unsupported checkpoint) if absent."""
        value = self.param(name)
        if value is None:
            raise ValueError(f"{self.qualname} has no {name!r} parameter")
        return value

    def __getattr__(self, name: str) -> Any:  # attribute access like the torch module: children by name
        modules = self.__dict__.get("_modules", {})
        if name in modules:
            return modules[name]
        raise AttributeError(f"{self.qualname} has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


_STUB_CLASSES: dict[str, type[Stub]] = {}


def _stub_class(qualname: str) -> type[Stub]:
    if qualname not in _STUB_CLASSES:
        _STUB_CLASSES[qualname] = type(qualname.rsplit(".", 1)[-1], (Stub,), {"qualname": qualname})
    return _STUB_CLASSES[qualname]


class _StorageType:
    def __init__(self, dtype: type[np.generic] | None) -> None:  # None: a storage numpy has no dtype for
        self.dtype = dtype


_STORAGE_DTYPES = {
    "HalfStorage": np.float16,
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "BFloat16Storage": None,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float16": np.float16,
    "half": np.float16,
    "float32": np.float32,
    "float": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "bool": np.bool_,
    "int8": np.int8,
    "int16": np.int16,
}


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[storage_offset].copy()
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False, backward_hooks: Any = None) -> np.ndarray:
    return data


def _torch_size(*args: Any) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else tuple(args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only an allow-list of globals; torch storages come from the zip."""

    _FUNCTIONS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
    }
    _STUB_PREFIXES = ("ultralytics.", "torch.nn.modules.")
    _STUB_NAMES = {("torch", "device")}

    def __init__(self, file: io.BufferedIOBase, storage_reader: Any) -> None:
        super().__init__(file)
        self._storage_reader = storage_reader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._FUNCTIONS:
            return self._FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return np.dtype(_TORCH_DTYPES[name])
        if (module, name) in self._STUB_NAMES or module.startswith(self._STUB_PREFIXES):
            if "." in name or name.startswith("_"):
                raise UnsafeCheckpoint(f"refusing global {module}.{name} in the checkpoint")
            return _stub_class(f"{module}.{name}")
        raise UnsafeCheckpoint(f"refusing global {module}.{name} in the checkpoint (not on the allow-list)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpoint(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        if not isinstance(dtype, (type, np.dtype)) or dtype is None:
            raise UnsafeCheckpoint(f"unsupported storage type {storage_type!r}")
        return self._storage_reader(key, np.dtype(dtype), numel)


def restricted_loads(data: bytes, storage_reader: Any = None) -> Any:
    """Unpickle ``data`` with the allow-list; ``storage_reader(key, dtype, numel)`` supplies tensor storages."""

    def no_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        raise UnsafeCheckpoint("tensor storage referenced but no storage reader given")

    return _RestrictedUnpickler(io.BytesIO(data), storage_reader or no_storage).load()


def load_checkpoint(path: Path) -> dict:
    """Read an ultralytics ``.pt`` (torch zip format) into plain Python/numpy objects, executing nothing."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a torch zip checkpoint") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected exactly one data.pkl in the checkpoint, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]

        def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            raw = zf.read(f"{prefix}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            return np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=numel)

        ckpt = restricted_loads(zf.read(pkl[0]), read_storage)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not an ultralytics checkpoint (top level is {type(ckpt).__name__})")
    return ckpt


# ----------------------------------------------------------------------------------------------------- graph building
class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _conv_params(conv: Stub) -> dict[str, Any]:
    kernel = conv.required("weight").shape[2:]
    if isinstance(conv.padding, str):
        raise ValueError(f"unsupported conv padding {conv.padding!r}")
    pads = conv.padding if isinstance(conv.padding, (tuple, list)) else (conv.padding,) * 2
    return {
        "kernel_shape": list(kernel),
        "strides": list(conv.stride),
        "pads": [*pads, *pads],
        "dilations": list(conv.dilation),
        "group": int(conv.groups),
    }


def _emit_conv2d(g: _Graph, conv: Stub, x: str, bn: Stub | None = None) -> str:
    weight = _f64(conv.required("weight"))
    bias = conv.param("bias")
    bias = np.zeros(weight.shape[0]) if bias is None else _f64(bias)
    if bn is not None:  # y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta
        scale = _f64(bn.required("weight")) / np.sqrt(_f64(bn.required("running_var")) + float(bn.eps))
        weight = weight * scale[:, None, None, None]
        bias = (bias - _f64(bn.required("running_mean"))) * scale + _f64(bn.required("bias"))
    w = g.const(weight.astype(np.float32), "w")
    b = g.const(bias.astype(np.float32), "b")
    return g.op("Conv", [x, w, b], "conv", **_conv_params(conv))


def _emit_act(g: _Graph, act: Stub | None, x: str) -> str:
    kind = act.type_name if act is not None else "Identity"
    if kind == "SiLU":
        return g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")
    if kind == "Identity":
        return x
    if kind == "ReLU":
        return g.op("Relu", [x])
    raise ValueError(f"unsupported activation {kind}")


def _single(m: Stub, x: str | list[str]) -> str:
    """The one input of a layer that takes one (a Concat takes a list)."""
    if not isinstance(x, str):
        raise ValueError(f"{m.qualname} takes one input, the checkpoint gives it {len(x)}")
    return x


def _emit(g: _Graph, m: Stub, x: str | list[str]) -> str:
    kind = m.type_name
    if kind in ("Conv", "DWConv"):
        bn = m.modules.get("bn")
        return _emit_act(g, m.modules.get("act"), _emit_conv2d(g, m.conv, _single(m, x), bn))
    if kind == "Conv2d":
        return _emit_conv2d(g, m, _single(m, x))
    if kind == "Sequential":
        for child in m.modules.values():
            x = _emit(g, child, x)
        return _single(m, x)
    if kind == "Bottleneck":
        y = _emit(g, m.cv2, _emit(g, m.cv1, x))
        return g.op("Add", [_single(m, x), y]) if m.add else y
    if kind == "C2f":
        y1 = _emit(g, m.cv1, x)
        parts = g.op("Split", [y1, g.const(np.array([m.c, m.c], np.int64), "split")], n_out=2, axis=1)
        ys = list(parts)
        for bottleneck in m.m.modules.values():
            ys.append(_emit(g, bottleneck, ys[-1]))
        return _emit(g, m.cv2, g.op("Concat", ys, axis=1))
    if kind == "SPPF":
        ys = [_emit(g, m.cv1, x)]
        pool = m.m
        k = int(pool.kernel_size if not isinstance(pool.kernel_size, (tuple, list)) else pool.kernel_size[0])
        pad = int(pool.padding if not isinstance(pool.padding, (tuple, list)) else pool.padding[0])
        for _ in range(3):
            ys.append(g.op("MaxPool", [ys[-1]], kernel_shape=[k, k], strides=[1, 1], pads=[pad] * 4))
        return _emit(g, m.cv2, g.op("Concat", ys, axis=1))
    if kind == "Upsample":
        if m.mode != "nearest":
            raise ValueError(f"unsupported upsample mode {m.mode}")
        s = float(m.scale_factor)
        scales = g.const(np.array([1, 1, s, s], np.float32), "scales")
        return g.op(
            "Resize",
            [_single(m, x), "", scales],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    if kind == "Concat":
        return g.op("Concat", list(x), axis=int(m.d))
    raise ValueError(f"unsupported layer type {m.qualname}")


def _emit_detect(g: _Graph, det: Stub, feats: list[str]) -> str:
    nc, reg_max = int(det.nc), int(det.reg_max)
    strides = [float(s) for s in np.asarray(det.stride).reshape(-1)]
    dfl_w = det.dfl.conv.param("weight") if reg_max > 1 else None
    cv2 = list(det.cv2.modules.values())
    cv3 = list(det.cv3.modules.values())
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    half = g.const(np.array(0.5, np.float32))
    levels = []
    for i, x in enumerate(feats):
        box = _emit(g, cv2[i], x)  # [b, 4*reg_max, h, w]
        cls = _emit(g, cv3[i], x)  # [b, nc, h, w]
        dist = g.op("Reshape", [box, g.const(np.array([0, 4, reg_max, -1], np.int64))])
        if dfl_w is not None:  # expected distance under softmax over the reg_max bins (the DFL 1x1 conv)
            prob = g.op("Softmax", [dist], axis=2)
            bins = g.const(np.asarray(dfl_w, np.float32).reshape(1, 1, reg_max, 1), "dfl")
            dist = g.op("ReduceSum", [g.op("Mul", [prob, bins]), g.const(np.array([2], np.int64))], keepdims=0)
        else:
            dist = g.op("Reshape", [dist, g.const(np.array([0, 4, -1], np.int64))])
        # anchor centres of this level's grid, in grid units (+0.5), built from the runtime shape
        shape = g.op("Shape", [x])
        h = g.op("Gather", [shape, g.const(np.array(2, np.int64))], axis=0)
        w = g.op("Gather", [shape, g.const(np.array(3, np.int64))], axis=0)
        xs = g.op("Add", [g.op("Cast", [g.op("Range", [zero, w, one])], to=TensorProto.FLOAT), half])
        ys = g.op("Add", [g.op("Cast", [g.op("Range", [zero, h, one])], to=TensorProto.FLOAT), half])
        hw = g.op(
            "Concat",
            [
                g.op("Unsqueeze", [h, g.const(np.array([0], np.int64))]),
                g.op("Unsqueeze", [w, g.const(np.array([0], np.int64))]),
            ],
            axis=0,
        )
        gx = g.op("Expand", [g.op("Unsqueeze", [xs, g.const(np.array([0], np.int64))]), hw])
        gy = g.op("Expand", [g.op("Unsqueeze", [ys, g.const(np.array([1], np.int64))]), hw])
        flat = g.const(np.array([1, 1, -1], np.int64))
        anchors = g.op("Concat", [g.op("Reshape", [gx, flat]), g.op("Reshape", [gy, flat])], axis=1)  # [1,2,hw]
        lt, rb = g.op("Split", [dist, g.const(np.array([2, 2], np.int64))], n_out=2, axis=1)
        x1y1 = g.op("Sub", [anchors, lt])
        x2y2 = g.op("Add", [anchors, rb])
        cxy = g.op("Div", [g.op("Add", [x1y1, x2y2]), g.const(np.array(2.0, np.float32))])
        wh = g.op("Sub", [x2y2, x1y1])
        dbox = g.op("Mul", [g.op("Concat", [cxy, wh], axis=1), g.const(np.array(strides[i], np.float32), "stride")])
        scores = g.op("Sigmoid", [g.op("Reshape", [cls, g.const(np.array([0, nc, -1], np.int64))])])
        levels.append(g.op("Concat", [dbox, scores], axis=1))
    return g.op("Concat", levels, axis=2)


def build_onnx(ckpt: dict) -> onnx.ModelProto:
    """Build the ONNX graph of the checkpoint's (EMA) detection model."""
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, Stub) or model.type_name != "DetectionModel":
        raise ValueError("checkpoint holds no ultralytics DetectionModel")
    layers = list(model.model.modules.values())
    g = _Graph()
    outputs: list[str] = []
    last = "images"  # the previous layer's output
    for layer in layers:
        src = layer.f
        x: str | list[str] = last
        if src != -1:
            x = [last if j == -1 else outputs[j] for j in src] if isinstance(src, (list, tuple)) else outputs[src]
        last = _emit_detect(g, layer, list(x)) if layer.type_name == "Detect" else _emit(g, layer, x)
        outputs.append(last)
    head = layers[-1]
    if head.type_name != "Detect":
        raise ValueError(f"last layer is {head.qualname}, expected a Detect head")
    g.nodes.append(helper.make_node("Identity", [last], ["output0"], name="output0"))
    nc = int(head.nc)
    graph = helper.make_graph(
        g.nodes,
        "yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + nc, "anchors"])],
        g.initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    onnx_model.ir_version = 8
    names = getattr(model, "names", None) or {i: str(i) for i in range(nc)}
    train_args = ckpt.get("train_args")
    if not isinstance(train_args, dict):
        train_args = {}
    meta = {
        "stride": str(int(max(np.asarray(head.stride).reshape(-1)))),
        "names": str(dict(names)),
        "task": "detect",
        "train_imgsz": str(train_args.get("imgsz", "")),
    }
    for key, value in meta.items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export_onnx(checkpoint: Path, dst: Path) -> Path:
    """Convert ``checkpoint`` to an ONNX file at ``dst`` (written to a temp file, then renamed)."""
    import hashlib

    model = build_onnx(load_checkpoint(checkpoint))
    model.metadata_props.add(key="source_sha256", value=hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest())
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return dst


def is_valid_export(path: Path, source_sha256: str | None = None) -> bool:
    """True when ``path`` is a complete export by this module (of the checkpoint with ``source_sha256`` if given)."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception:
        return False
    meta = {p.key: p.value for p in model.metadata_props}
    if model.producer_name != PRODUCER:
        return False
    return source_sha256 is None or meta.get("source_sha256") == source_sha256
