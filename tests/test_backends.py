"""Backends: the file picks the backend, the device reported is the one really used, outputs agree."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from _runtime_models import exported_onnx, save_checkpoint, tissue_image, without_metadata

from segcls.core.errors import ModelError, SegclsError
from segcls.runtime.backends import backend_for, open_backend


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def batch():
    return np.stack([tissue_image(128, 192, seed=s) for s in range(2)])


def test_onnxruntime_backend_contract(onnx_path, batch):
    backend = open_backend(onnx_path)
    try:
        assert backend.name == "onnxruntime" and backend.device == "CPUExecutionProvider"
        assert backend.on_cpu and not backend.fixed_tile  # trimmed tiles, readers sharing the cores
        assert backend.description.classes == ("background", "benign", "tumour")
        assert backend.description.mpp == 2.0
        out = backend.infer(batch)
        assert out.labels.shape == (2, 16, 24) and out.labels.dtype == np.uint8
        assert out.probs.shape == (2, 3, 16, 24) and out.class_scores.shape == (2, 3)
        np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(out.labels, out.probs.argmax(1))
    finally:
        backend.close()


def test_torch_backend_agrees_with_onnxruntime(tmp_path, onnx_path, batch):
    """On the CPU by name: "auto" would pick CUDA FP16 on a GPU machine (tests/test_gpu_torch_backend.py)."""
    pytest.importorskip("torch")
    checkpoint = save_checkpoint(tmp_path / "model.pt")  # same seed as the exported model
    ort_backend = open_backend(onnx_path)
    reference = ort_backend.infer(batch)
    ort_backend.close()
    torch_backend = open_backend(checkpoint, "torch", device="cpu")
    try:
        assert torch_backend.name == "torch" and torch_backend.device == "cpu"
        assert torch_backend.on_cpu and not torch_backend.fixed_tile
        out = torch_backend.infer(batch)
    finally:
        torch_backend.close()
    np.testing.assert_allclose(out.probs, reference.probs, atol=1e-4)
    np.testing.assert_allclose(out.class_scores, reference.class_scores, atol=1e-4)
    assert (out.labels == reference.labels).mean() > 0.999


def test_cuda_is_reported_only_when_the_session_really_uses_it(onnx_path, monkeypatch):
    """Asking ORT for CUDA where it cannot run falls back to the CPU: `device` must say CPU, not what was asked."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    cuda_runs = "CUDAExecutionProvider" in available
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    asked, session = [], onnxruntime.InferenceSession

    def recording_session(path, options=None, providers=None, **kw):
        asked.append([p if isinstance(p, str) else p[0] for p in providers])  # a name or (name, options)
        return session(path, options, providers=providers, **kw)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = open_backend(onnx_path)
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]  # CUDA was really asked for first
    assert backend.device == ("CUDAExecutionProvider" if cuda_runs else "CPUExecutionProvider")


def test_model_file_decides_the_backend(tmp_path, onnx_path):
    assert backend_for("m.onnx") == "onnxruntime"
    assert backend_for("m.engine") == backend_for("m.plan") == "tensorrt"
    assert backend_for("m.pt") == "torch"
    with pytest.raises(ModelError, match="cannot tell what kind of model"):
        backend_for("m.h5")
    with pytest.raises(ModelError, match="the torch backend cannot run"):
        open_backend(onnx_path, "torch")
    with pytest.raises(SegclsError, match="--backend must be one of"):
        open_backend(onnx_path, "tvm")


def test_bad_model_files(tmp_path, onnx_path):
    with pytest.raises(ModelError, match="model not found"):
        open_backend(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf" * 10)
    with pytest.raises(ModelError, match=str(garbage)):
        open_backend(garbage)
    bare = without_metadata(onnx_path, tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no segcls metadata"):
        open_backend(bare)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(SegclsError):  # no sidecar, and no TensorRT here
        open_backend(engine)


def test_runtime_imports_without_torch():
    code = (
        "import sys; import segcls.runtime.cli, segcls.runtime.pipeline, segcls.runtime.backends.onnxruntime; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime has no CUDA execution provider here")
def test_onnxruntime_on_cuda(onnx_path, batch):
    """Skipped at collection, before `onnx_path` runs an export for nothing (tests/test_gpu_skips.py)."""
    backend = open_backend(onnx_path)
    if backend.device != "CUDAExecutionProvider":
        pytest.skip(f"CUDA provider present but not usable: session runs on {backend.device}")
    out = backend.infer(batch)
    cpu = open_backend(onnx_path, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out.probs, cpu.infer(batch).probs, atol=1e-3)
