"""The torch backend and the slide pipeline on CUDA, checked against the CPU FP32 outputs of the same
pixels. Skips without a CUDA GPU (a failure with SEGCLS_REQUIRE_GPU=1: tests/conftest.py). The same code
runs on the CPU through a torch.cuda stand-in in tests/test_torch_backend_stream.py."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _runtime_models import save_checkpoint, tissue_image

from segcls.runtime.backends import open_backend
from segcls.runtime.backends.lazy import LazyArray
from segcls.runtime.pipeline import InferOptions, infer_slide

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]
CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("gpu") / "model.pt")


@pytest.fixture(scope="module")
def batch():
    return np.stack([tissue_image(256, 256, seed=s) for s in range(6)])


@pytest.fixture(scope="module")
def cpu_reference(checkpoint, batch):
    return open_backend(checkpoint, "torch", device="cpu", precision="fp32").infer(batch)


def test_default_on_cuda_is_fp16(checkpoint):
    backend = open_backend(checkpoint, "torch")
    assert backend.device.startswith("cuda") and backend.device.endswith(", fp16)")
    assert backend.precision == "fp16"


@pytest.mark.parametrize(
    "precision, agreement, probs_atol, scores_atol",
    [("fp32", 0.999, 1e-3, 1e-2), ("tf32", 0.995, 1e-2, 0.1), ("fp16", 0.995, 5e-2, 0.1)],
)
def test_cuda_agrees_with_cpu_fp32(checkpoint, batch, cpu_reference, precision, agreement, probs_atol, scores_atol):
    """fp32 is IEEE FP32 (TF32 off), so it is held closer to the CPU than tf32 and fp16 are."""
    with open_backend(checkpoint, "torch", device="cuda", precision=precision) as gpu:
        out = gpu.infer(batch)
    assert out.labels.dtype == np.uint8
    assert (out.labels == cpu_reference.labels).mean() >= agreement
    np.testing.assert_allclose(out.probs, cpu_reference.probs, atol=probs_atol)
    np.testing.assert_allclose(out.class_scores, cpu_reference.class_scores, atol=scores_atol, rtol=0.05)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_stream_on_cuda_matches_cpu_with_a_partial_last_batch(checkpoint, batch, cpu_reference, mode):
    """infer_stream queues batch k+1 before it returns batch k; outputs come back in order; the smaller
    batches run padded to the first one's shape (one autotune, one CUDA graph)."""
    with open_backend(checkpoint, "torch", device="cuda", precision="fp16", mode=mode) as gpu:
        parts = [batch[0:2], batch[2:4], batch[4:5], batch[5:6]]
        labels, probs_read = [], []
        for out in gpu.infer_stream(iter(parts)):
            assert isinstance(out.probs, LazyArray) and not out.probs.on_host  # probs stay on the GPU
            labels.append(out.labels.copy())  # valid only until the next output
            probs_read.append(np.asarray(out.probs, dtype=np.float32))
        assert gpu.shapes_run == {(2, *batch.shape[1:])}
    labels = np.concatenate(labels)
    assert labels.shape == cpu_reference.labels.shape
    assert (labels == cpu_reference.labels).mean() >= 0.995
    np.testing.assert_allclose(np.concatenate(probs_read), cpu_reference.probs, atol=5e-2)


@pytest.mark.parametrize("stitch", ["crop", "blend"])
def test_slide_pipeline_on_cuda_matches_cpu(tmp_path, checkpoint, stitch):
    """The CPU reference runs whole tiles too (trim=False): the GPU's workload, not a trimmed one."""
    opts = InferOptions(mpp=2.0, tile=512, stitch=stitch, batch=2, progress=False)
    gpu = infer_slide(CMU, open_backend(checkpoint, "torch", device="cuda"), tmp_path / "gpu.mask.tif", opts)
    cpu_backend = open_backend(checkpoint, "torch", device="cpu")
    cpu = infer_slide(CMU, cpu_backend, tmp_path / "cpu.mask.tif", replace(opts, trim=False))
    assert gpu.summary["device"].startswith("cuda") and gpu.summary["tiles"]["run"] > 0
    assert gpu.summary["tiles"] == cpu.summary["tiles"]
    assert gpu.mask.is_file()
    tissue = cpu.labels != 255
    assert np.array_equal(gpu.labels != 255, tissue)
    assert (gpu.labels[tissue] == cpu.labels[tissue]).mean() >= 0.99
