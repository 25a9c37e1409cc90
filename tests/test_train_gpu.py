"""Training on CUDA with AMP. Skips without a CUDA GPU: passing here proves nothing on a CPU machine."""

import pytest
import torch
from _train_helpers import colour_dataset

from segcls.checkpoint import load_model
from segcls.train import TrainConfig, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]


def test_cuda_amp_training_learns_and_saves_cpu_loadable_checkpoints(tmp_path):
    dataset = colour_dataset(tmp_path / "ds")
    config = TrainConfig(
        dataset=str(dataset), out_dir=str(tmp_path / "run"), tile=32, batch_size=16, epochs=4,
        steps_per_epoch=8, lr=1e-3, device="cuda", setting="S+C", seg_fraction=0.5,
    )  # fmt: skip
    trainer = Trainer(config, progress=False)
    assert trainer.use_amp and next(trainer.model.parameters()).is_cuda
    metrics = trainer.run()
    assert metrics["macro_f1"] > 0.75
    model, _, _ = load_model(tmp_path / "run" / "best.pt")  # saved from CUDA, loads on the CPU
    assert not next(model.parameters()).is_cuda
