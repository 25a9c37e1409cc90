"""Engine build and the TensorRT backend, against TensorRT 10- and 11-shaped test doubles (CPU), and the
real thing where a GPU and TensorRT are present (marked `gpu`, `tensorrt`)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segcls.core import model_info as mi
from segcls.core.cuda import CudaDevice, import_tensorrt
from segcls.core.description import ModelDescription
from segcls.core.engine import build_engine, default_timing_cache, network_flags
from segcls.core.errors import BackendUnavailableError, ExportError, ModelError, SegclsError
from segcls.runtime.backends.tensorrt import TensorRTBackend

try:  # tests/ is a package in one layout and a folder on sys.path in the other
    from tests.fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs
except ImportError:
    from fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs

DESCRIPTION = ModelDescription(classes=("a", "b", "c", "d"), mpp=0.5)


def _onnx(path, precision="fp16", num_classes=4):
    """A segcls-shaped ONNX file (I/O and metadata only): all the doubles' parser reads."""
    probs_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [],
        "segcls",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "h", "w", 3])],
        [
            helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", "h8", "w8"]),
            helper.make_tensor_value_info("probs", probs_type, ["batch", num_classes, "h8", "w8"]),
            helper.make_tensor_value_info("class_scores", TensorProto.FLOAT, ["batch", num_classes]),
        ],
    )
    model = helper.make_model(graph)
    helper.set_model_props(
        model,
        {mi.KEY_DESCRIPTION: DESCRIPTION.to_json(), mi.KEY_PRECISION: precision, mi.KEY_VERSION: "0.1.0",
         mi.KEY_CHECKPOINT_SHA256: "ab" * 32},
    )  # fmt: skip
    onnx.save(model, path)
    return path


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Install TensorRT-10 doubles; tests may swap the TensorRT one with `install`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trt, cudart = fake_tensorrt(10), fake_cudart(capability=(8, 9))
    install(monkeypatch, trt, cudart)
    return trt, cudart


@pytest.mark.parametrize("style", [10, 11])
def test_build_and_infer(style, monkeypatch, tmp_path, fakes):
    trt = fake_tensorrt(style)
    _, cudart = fakes
    install(monkeypatch, trt)
    engine = tmp_path / "model.engine"
    result = build_engine(_onnx(tmp_path / "model.onnx"), engine, max_batch=3, tile=64, workspace_gib=1)

    flags, builder_flags, pools, profile = trt.built[0]
    assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder_flags == set()  # no FP16 (absent in 11, refused on strongly typed networks in 10)
    assert pools == {trt.MemoryPoolType.WORKSPACE: 2**30}
    assert profile["image"] == [[1, 64, 64, 3], [3, 64, 64, 3], [3, 64, 64, 3]]

    side = json.loads((tmp_path / "model.engine.json").read_text())
    assert side[mi.KEY_TENSORRT_VERSION] == trt.__version__ and side[mi.KEY_COMPUTE_CAPABILITY] == "8.9"
    assert side[mi.KEY_DESCRIPTION]["classes"] == ["a", "b", "c", "d"] and side[mi.KEY_PRECISION] == "fp16"
    assert result.timing_cache == default_timing_cache(trt.__version__, "8.9", "Fake GPU")
    assert result.timing_cache.read_bytes() == b"FAKECACHE:Fake GPU:1"

    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)  # > max batch
    with TensorRTBackend(engine) as backend:
        assert backend.description == DESCRIPTION and backend.info.max_batch == 3
        assert backend.device == "cuda:0 (Fake GPU, sm 8.9)"
        out = backend.infer(images)
        with pytest.raises(ModelError, match="built for 64x64 tiles"):
            backend.infer(images[:, :32])
    labels, probs, scores = reference_outputs(images, 4, np.float16)
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_array_equal(out.probs, probs)
    np.testing.assert_allclose(out.class_scores, scores, rtol=1e-6)
    assert out.probs.dtype == np.float16 and out.labels.dtype == np.uint8
    assert cudart.memory == cudart.host == cudart.streams == cudart.events == {}  # close() freed everything


def test_timing_cache_is_reused(fakes, tmp_path):
    onnx_path = _onnx(tmp_path / "m.onnx", precision="fp32")
    cache = tmp_path / "my.timing"
    build_engine(onnx_path, tmp_path / "a.engine", tile=32, timing_cache=cache)
    build_engine(onnx_path, tmp_path / "b.engine", tile=32, timing_cache=cache)
    assert cache.read_bytes() == b"FAKECACHE:Fake GPU:2"  # the second build started from the first one's cache


def test_timing_cache_from_another_device_is_replaced(fakes, tmp_path, monkeypatch):
    """TensorRT refuses a cache made on a device with other properties (an H100's cache on an H200: both
    sm 9.0); the build goes on without it and writes a fresh cache for this device."""
    onnx_path = _onnx(tmp_path / "m.onnx", precision="fp32")
    cache = tmp_path / "my.timing"
    cache.write_bytes(b"FAKECACHE:NVIDIA H100:7")
    messages = []
    result = build_engine(onnx_path, tmp_path / "a.engine", tile=32, timing_cache=cache, log=messages.append)
    assert result.path.is_file()
    assert cache.read_bytes() == b"FAKECACHE:Fake GPU:1"
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and "another GPU or TensorRT" in warnings[0] and str(cache) in warnings[0]


def test_default_timing_cache_names_the_device(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    h100 = default_timing_cache("10.3.0", "9.0", "NVIDIA H100 80GB HBM3")
    assert h100 != default_timing_cache("10.3.0", "9.0", "NVIDIA H200")
    assert h100.parent == tmp_path / "segcls" and h100.name == "tensorrt-10.3.0-sm90-NVIDIA-H100-80GB-HBM3.timing"


def test_network_flags_without_strongly_typed_flag():
    """A TensorRT where strong typing is the only mode and the flag is gone: no flags at all."""
    trt = fake_tensorrt(11)
    trt.NetworkDefinitionCreationFlag = type("NDCF", (), {})
    assert network_flags(trt) == 0


def test_strongly_typed_fp16_builder_flag_is_refused_by_double():
    """The TRT10 double behaves like TensorRT 10: FP16 flag + strongly typed network = no engine."""
    trt = fake_tensorrt(10)
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    network.io.append(("image", 1, 5, [-1, -1, -1, 3]))
    config = builder.create_builder_config()
    config.add_optimization_profile(builder.create_optimization_profile())
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trt": fake_tensorrt(10, version="10.5.1")}, "built with TensorRT 10.3.0 for compute capability 8.9"),
        ({"cudart": fake_cudart(capability=(9, 0))}, "this machine has TensorRT 10.3.0 and compute capability 9.0"),
    ],
)
def test_mismatched_engine_is_refused(change, message, fakes, monkeypatch, tmp_path):
    engine = tmp_path / "model.engine"
    build_engine(_onnx(tmp_path / "model.onnx"), engine, max_batch=2, tile=32)
    install(monkeypatch, **change)
    backend = TensorRTBackend(engine)
    with pytest.raises(ModelError, match=message) as err:
        backend.load()
    assert "segcls-export --trt" in str(err.value)
    if "cudart" in change:
        assert change["cudart"].streams == change["cudart"].host == {}  # the refused load released the device


def test_engine_without_sidecar(fakes, tmp_path):
    engine = tmp_path / "model.engine"
    build_engine(_onnx(tmp_path / "model.onnx"), engine, max_batch=2, tile=32)
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(ModelError, match="engine sidecar not found"):
        TensorRTBackend(engine).load()


def test_corrupt_engine(fakes, tmp_path):
    engine = tmp_path / "model.engine"
    build_engine(_onnx(tmp_path / "model.onnx"), engine, max_batch=2, tile=32)
    engine.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="could not deserialise"):
        TensorRTBackend(engine).load()


def test_onnx_is_not_an_engine(fakes, tmp_path):
    with pytest.raises(ModelError, match="not a TensorRT engine"):
        TensorRTBackend(_onnx(tmp_path / "m.onnx")).load()


def test_parse_failure_is_an_export_error(fakes, tmp_path, monkeypatch):
    trt, _ = fakes

    def refuse(self, path):
        self.errors.append("In node 3 (Conv): unsupported data type")
        return False

    monkeypatch.setattr(trt.OnnxParser, "parse_from_file", refuse)
    with pytest.raises(ExportError, match=r"cannot parse .*m.onnx: In node 3 \(Conv\)"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")


def test_not_a_segcls_onnx_file(fakes, tmp_path):
    junk = tmp_path / "m.onnx"
    junk.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelError, match="not an ONNX model"):
        build_engine(junk, tmp_path / "m.engine")


def test_bad_build_arguments(fakes, tmp_path):
    onnx_path = _onnx(tmp_path / "m.onnx")
    with pytest.raises(SegclsError, match="multiple of 16"):
        build_engine(onnx_path, tmp_path / "m.engine", tile=100)
    with pytest.raises(SegclsError, match="max-batch"):
        build_engine(onnx_path, tmp_path / "m.engine", max_batch=0)


def test_failed_build_writes_nothing(fakes, tmp_path, monkeypatch):
    trt, _ = fakes
    monkeypatch.setattr(trt.Builder, "build_serialized_network", lambda self, network, config: None)
    with pytest.raises(ExportError, match="failed to build"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", tile=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


def test_missing_libraries(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed: pip install 'segcls\[gpu\]'"):
        import_tensorrt()
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailableError, match="cuda-python is not installed"):
        CudaDevice()
    install(monkeypatch, cudart=fake_cudart(devices=0))
    with pytest.raises(BackendUnavailableError, match="cudaErrorNoDevice"):
        CudaDevice()


def _tensorrt_unavailable() -> str | None:
    """Why the real TensorRT cannot run here, or None (asked at collection: a skip before any fixture)."""
    try:
        import_tensorrt()
        CudaDevice().close()
    except BackendUnavailableError as e:
        return str(e)
    return None


TENSORRT_UNAVAILABLE = _tensorrt_unavailable()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(TENSORRT_UNAVAILABLE is not None, reason=str(TENSORRT_UNAVAILABLE))
def test_real_tensorrt_matches_onnxruntime(tmp_path):
    """On a GPU machine with TensorRT: build an FP16 engine from a real export and compare it with ORT."""
    import onnxruntime as ort
    import torch

    from segcls.checkpoint import save_checkpoint
    from segcls.export.onnx_export import export_onnx
    from segcls.model import build_model

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model(4), DESCRIPTION)
    onnx_path = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", fp16=True, verify_size=64).path
    engine = build_engine(onnx_path, tmp_path / "m.engine", max_batch=4, tile=128).path
    images = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    with TensorRTBackend(engine) as backend:
        got = backend.infer(images)
    assert (got.labels == expected[0]).mean() >= 0.99
    np.testing.assert_allclose(got.probs.astype(np.float32), expected[1].astype(np.float32), atol=1e-2)
    np.testing.assert_allclose(got.class_scores, expected[2], atol=2e-2, rtol=1e-2)
