"""`--backend tensorrt` on an .onnx model: an engine built once into ~/.cache/segcls/engines and reused,
against the TensorRT and cudart doubles (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from test_export_tensorrt import _onnx

from segcls.runtime import cli
from segcls.runtime.backends import open_backend

try:
    from tests.fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs
except ImportError:
    from fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs


@pytest.fixture
def trt(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trt = fake_tensorrt(10)
    install(monkeypatch, trt, fake_cudart(capability=(9, 0), name="NVIDIA H200"))
    return trt


def test_engine_is_built_once_and_reused(trt, tmp_path):
    onnx_path = _onnx(tmp_path / "m.onnx")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for _ in range(2):
        with open_backend(onnx_path, "tensorrt", tile=32, batch=2, threads=2) as backend:  # threads: ORT's
            assert backend.name == "tensorrt" and backend.device == "cuda:0 (NVIDIA H200, sm 9.0)"
            np.testing.assert_array_equal(backend.infer(images).labels, reference_outputs(images, 4)[0])
    assert len(trt.built) == 1
    engines = sorted((tmp_path / "cache" / "segcls" / "engines").glob("*.engine"))
    assert len(engines) == 1
    assert engines[0].name.endswith("-trt10.3.0-sm90-NVIDIA-H200-t32-b2.engine")

    with open_backend(onnx_path, "tensorrt", tile=64, batch=2):  # another profile: another engine
        pass
    assert len(trt.built) == 2


def test_changed_model_or_tensorrt_gets_a_new_engine(trt, tmp_path, monkeypatch):
    onnx_path = _onnx(tmp_path / "m.onnx")
    open_backend(onnx_path, "tensorrt", tile=32, batch=2).close()
    _onnx(onnx_path, num_classes=5)  # same path, other bytes
    open_backend(onnx_path, "tensorrt", tile=32, batch=2).close()
    newer = fake_tensorrt(11, version="11.0.0")
    install(monkeypatch, newer)
    open_backend(onnx_path, "tensorrt", tile=32, batch=2).close()
    assert len(trt.built) == 2 and len(newer.built) == 1
    assert len(list((tmp_path / "cache" / "segcls" / "engines").glob("*.engine"))) == 3


def test_cli_backend_tensorrt_on_onnx(trt, tmp_path):
    """segcls-infer --model m.onnx --backend tensorrt: the engine is built for --tile/--batch, then used."""
    from PIL import Image

    slide = tmp_path / "slide.png"
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(slide)
    args = [str(slide), "-o", str(tmp_path / "out.mask.tif"), "--model", str(_onnx(tmp_path / "m.onnx")),
            "--backend", "tensorrt", "--tile", "64", "--overlap", "16", "--batch", "2", "--slide-mpp", "0.5",
            "--tissue", "none", "-q"]  # fmt: skip
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "building TensorRT 10.3.0 engine for NVIDIA H200" in result.output
    assert "Backend: tensorrt on cuda:0 (NVIDIA H200, sm 9.0)" in result.output
    assert (tmp_path / "out.mask.tif").is_file() and len(trt.built) == 1
    profile = trt.built[0][3]["image"]
    assert profile[2] == [2, 64, 64, 3]


def test_precision_flag_is_refused_for_tensorrt(trt, tmp_path):
    """TensorRT runs a model in the precision it was exported with (this one FP16): another is refused."""
    args = [str(tmp_path / "s.png"), "-o", str(tmp_path / "o.tif"), "--model", str(_onnx(tmp_path / "m.onnx")),
            "--backend", "tensorrt", "--precision", "fp32"]  # fmt: skip
    (tmp_path / "s.png").write_bytes(b"")
    result = CliRunner().invoke(cli.main, args)
    assert (
        result.exit_code != 0
        and "Error: tensorrt runs m.onnx in the precision it was exported with (fp16)" in result.output
    )
    assert trt.built == []  # refused before an engine build, not after it
