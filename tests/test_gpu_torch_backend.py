"""The torch backend and the slide pipeline on CUDA. Skips without a CUDA GPU."""

from pathlib import Path

import numpy as np
import pytest
import torch
from _runtime_models import save_checkpoint, tissue_image

from segcls.runtime.backends import open_backend
from segcls.runtime.pipeline import InferOptions, infer_slide

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]
CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


def test_torch_backend_on_cuda_matches_cpu(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.pt")
    batch = np.stack([tissue_image(256, 256, seed=s) for s in range(3)])
    with open_backend(checkpoint) as gpu:
        assert gpu.device.startswith("cuda")
        out = gpu.infer(batch)
    cpu = open_backend(checkpoint, device="cpu")
    ref = cpu.infer(batch)
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-3)
    assert (out.labels == ref.labels).mean() > 0.999


def test_slide_pipeline_on_cuda(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.pt")
    result = infer_slide(CMU, checkpoint, tmp_path / "cmu.mask.tif", InferOptions(mpp=2.0, tile=512, progress=False))
    assert result.summary["device"].startswith("cuda") and result.summary["tiles"]["run"] > 0
    assert result.mask.is_file()
