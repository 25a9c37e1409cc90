"""The torch backend's precision and lazy outputs, on the CPU (the CUDA path: tests/test_gpu_torch_backend.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _runtime_models import save_checkpoint, tissue_image

from segcls.core.errors import SegclsError
from segcls.runtime.backends import open_backend
from segcls.runtime.backends.torch import TorchBackend


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("torch") / "model.pt")


@pytest.fixture(scope="module")
def batch():
    return np.stack([tissue_image(256, 256, seed=s) for s in range(4)])


@pytest.fixture(scope="module")
def reference(checkpoint, batch):
    backend = open_backend(checkpoint, "torch", device="cpu")
    assert backend.precision == "fp32" and backend.device == "cpu"  # the CPU default
    return backend.infer(batch)


@pytest.mark.parametrize("precision, agreement", [("fp16", 0.995), ("bf16", 0.98)])
def test_half_precision_agrees_with_fp32(checkpoint, batch, reference, precision, agreement):
    """FP16 (what CUDA runs by default) keeps >= 99.5 % of the FP32 labels; bf16 (8-bit mantissa) less."""
    backend = open_backend(checkpoint, "torch", device="cpu", precision=precision)
    assert backend.device == f"cpu ({precision})"
    out = backend.infer(batch)
    assert out.labels.dtype == np.uint8 and out.probs.dtype == np.float32
    assert (out.labels == reference.labels).mean() >= agreement
    np.testing.assert_allclose(out.probs, reference.probs, atol=0.05)


def test_stream_matches_infer(checkpoint, batch, reference):
    backend = open_backend(checkpoint, "torch", device="cpu")
    outs = list(backend.infer_stream(iter([batch[:3], batch[3:]])))
    np.testing.assert_array_equal(np.concatenate([o.labels for o in outs]), reference.labels)


def test_bad_precision(checkpoint, tmp_path):
    with pytest.raises(SegclsError, match="--precision must be one of fp32, tf32, fp16, bf16"):
        TorchBackend(checkpoint, precision="int4")


def test_another_precision_is_refused_for_exported_models(tmp_path):
    """ONNX Runtime runs an exported model in the precision it was exported with (backends/precision.py)."""
    from test_export_tensorrt import _onnx

    onnx = _onnx(tmp_path / "m.onnx", precision="fp32")
    with pytest.raises(SegclsError, match=r"onnxruntime runs m.onnx in the precision it was exported with \(fp32\)"):
        open_backend(onnx, precision="fp16")


def test_cli_precision_reaches_the_torch_backend(checkpoint, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from segcls.runtime import cli

    slide = tmp_path / "slide.png"
    Image.fromarray(tissue_image(96, 96)).save(slide)
    args = [str(slide), "-o", str(tmp_path / "m.tif"), "--model", str(checkpoint), "--precision", "bf16",
            "--tile", "64", "--overlap", "16", "--slide-mpp", "2.0", "--tissue", "none", "-q"]  # fmt: skip
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"Backend: torch on .*bf16\)", result.output) and (tmp_path / "m.tif").is_file()  # CUDA too
