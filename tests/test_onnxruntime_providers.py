"""ONNX Runtime's GPU providers without a GPU: the options segcls passes, the silent CPU fallback refused
or warned about, and IO binding (run for real on the CPU provider; the CUDA side through a double)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnxruntime
import pytest
from _runtime_models import exported_onnx, tissue_image

from segcls.core.errors import BackendUnavailableError
from segcls.runtime.backends import open_backend
from segcls.runtime.backends.lazy import LazyArray
from segcls.runtime.backends.onnxruntime import OnnxRuntimeBackend, provider_options


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def batch():
    return np.stack([tissue_image(128, 128, seed=s) for s in range(2)])


def test_provider_options(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    trt = provider_options("TensorrtExecutionProvider", device_id=1)
    cache = str(tmp_path / "segcls" / "ort-tensorrt")
    assert trt == {
        "device_id": "1", "trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache, "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache,
    }  # fmt: skip
    assert provider_options("CUDAExecutionProvider") == {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert provider_options("CPUExecutionProvider") == {}


_REAL_SESSION = onnxruntime.InferenceSession


class _Session:
    """An InferenceSession double that runs on the CPU whatever it was asked for, like ORT without CUDA."""

    created: ClassVar[list] = []

    def __init__(self, path, options, providers, runs_on=("CPUExecutionProvider",)):
        _Session.created.append(providers)
        self._real = _REAL_SESSION(path, providers=["CPUExecutionProvider"])
        self._runs_on = list(runs_on)

    def get_providers(self):
        return self._runs_on

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def gpu_listed(monkeypatch, tmp_path):
    """ORT that lists the GPU providers (as onnxruntime-gpu does) but cannot start them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    monkeypatch.setattr(onnxruntime, "InferenceSession", _Session)
    _Session.created.clear()


def test_named_gpu_provider_that_falls_back_is_refused(onnx_path, gpu_listed, tmp_path):
    names = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="lists TensorrtExecutionProvider but could not start it"):
        open_backend(onnx_path, providers=names)
    (passed,) = _Session.created
    assert [name for name, _ in passed] == names
    assert passed[0][1]["trt_engine_cache_path"] == str(tmp_path / "segcls" / "ort-tensorrt")
    assert (tmp_path / "segcls" / "ort-tensorrt").is_dir()
    assert passed[1][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_auto_fallback_is_warned_about(onnx_path, gpu_listed, batch):
    with pytest.warns(RuntimeWarning, match="could not start CUDAExecutionProvider; running on CPUExecutionProvider"):
        backend = open_backend(onnx_path)
    assert backend.device == "CPUExecutionProvider" and backend.fallback == "CUDAExecutionProvider"
    assert isinstance(backend.infer(batch).probs, np.ndarray)  # no IO binding on the CPU by default


def test_provider_missing_from_this_onnxruntime(onnx_path):
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailableError, match=r"has no CUDAExecutionProvider .*segcls\[gpu-cu12\]"):
        open_backend(onnx_path, providers=["CUDAExecutionProvider"])


def test_io_binding_matches_run(onnx_path, batch):
    """The IO-binding path for real, on the CPU provider: same outputs, probs fetched only when read; a CPU
    runs the shapes it is given (no padding)."""
    plain_backend = open_backend(onnx_path)
    plain = plain_backend.infer(batch)
    assert plain_backend.infer(batch[:1]).labels.shape[0] == 1
    assert plain_backend.shapes_run == {batch.shape, (1, *batch.shape[1:])}
    bound = OnnxRuntimeBackend(onnx_path, io_binding=True)
    bound.load()
    out = bound.infer(batch)
    assert isinstance(out.probs, LazyArray) and not out.probs.on_host
    np.testing.assert_array_equal(out.labels, plain.labels)
    np.testing.assert_array_equal(np.asarray(out.probs), plain.probs)
    np.testing.assert_array_equal(out.class_scores, plain.class_scores)


@pytest.fixture
def cuda_session(monkeypatch):
    """ORT whose sessions say they run on CUDA (and run on the CPU)."""
    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda p, o, providers: _Session(p, o, providers, ["CUDAExecutionProvider"])
    )


def test_gpu_session_runs_one_input_shape(onnx_path, cuda_session):
    """cuDNN's EXHAUSTIVE search (and the TensorRT EP's engine build) run per input shape: on a GPU
    provider the last, smaller batch of a slide is padded up to the others; its outputs are its own."""
    tiles = np.stack([tissue_image(64, 64, seed=s) for s in range(5)])
    reference = open_backend(onnx_path, providers=["CPUExecutionProvider"]).infer(tiles)
    backend = open_backend(onnx_path)
    assert backend.device == "CUDAExecutionProvider"
    outs = [
        (o.labels.copy(), np.asarray(o.probs), o.class_scores)
        for o in backend.infer_stream([tiles[:2], tiles[2:4], tiles[4:]])
    ]
    assert backend.shapes_run == {(2, 64, 64, 3)}
    assert [len(labels) for labels, _, _ in outs] == [2, 2, 1] and outs[2][1].shape == (1, 3, 8, 8)
    for got, want in zip(zip(*outs, strict=True), reference, strict=True):
        np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)


def test_gpu_session_binds_outputs_on_the_device(onnx_path, cuda_session, batch):
    """A session that really runs on CUDA gets its outputs bound on 'cuda' (checked against a recorder)."""
    backend = open_backend(onnx_path)
    assert backend.device == "CUDAExecutionProvider" and backend.fallback is None
    real_binding = backend.session._real.io_binding
    bound = []

    def recording_binding():
        binding = real_binding()
        original = binding.bind_output

        def bind_output(name, device_type="cpu", device_id=0):
            bound.append((name, device_type, device_id))
            return original(name, "cpu", 0)  # no CUDA here: keep them on the CPU for real

        binding.bind_output = bind_output
        return binding

    backend.session.io_binding = recording_binding
    out = backend.infer(batch)
    assert bound == [("labels", "cuda", 0), ("probs", "cuda", 0), ("class_scores", "cuda", 0)]
    assert out.labels.shape == (2, 16, 16) and not out.probs.on_host
