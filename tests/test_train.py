import json

import numpy as np
import pytest
import torch
from _train_helpers import colour_dataset
from click.testing import CliRunner

from segcls.checkpoint import load_checkpoint, load_model
from segcls.cli.evaluate import main as eval_main
from segcls.cli.train import main as train_main
from segcls.train import TrainConfig, Trainer, class_weights, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("ds") / "colours")


def _config(dataset, out, **kw):
    base = dict(dataset=str(dataset), out_dir=str(out), tile=32, batch_size=16, epochs=2, lr=1e-3, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_class_weights_inverse_frequency_largest_one():
    w = class_weights(np.array([100, 25, 0, 50]))
    assert w.tolist() == pytest.approx([0.25, 1.0, 1.0, 0.5])


def test_training_steps_lower_the_loss(dataset, tmp_path):
    trainer = Trainer(_config(dataset, tmp_path, setting="S+C*", seg_fraction=1.0), progress=False)
    seg_idx, cls_idx = trainer.selection.seg[:16], trainer.selection.cls[:16]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - the same augmented batch each time
    trainer.model.eval()
    with torch.no_grad():
        before = trainer._losses(seg_idx, cls_idx, gen())[0].item()
    trainer.model.train()
    for _ in range(8):
        loss = trainer._losses(seg_idx, cls_idx, gen())[0]
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    trainer.model.eval()
    with torch.no_grad():
        after = trainer._losses(seg_idx, cls_idx, gen())[0].item()
    assert after < 0.8 * before


@pytest.mark.parametrize("mode", ["two-step", "joint"])
def test_short_training_beats_chance(dataset, tmp_path, mode):
    config = _config(dataset, tmp_path, setting="S+C", seg_fraction=0.5, epochs=4, steps_per_epoch=8, mode=mode)
    metrics = train(config, progress=False)
    assert metrics["macro_f1"] > 0.75  # chance for 3 classes is ~0.33
    assert metrics["cls_accuracy"] is not None and metrics["cls_accuracy"] > 0.75
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["macro_f1"] == metrics["macro_f1"]
    assert set(on_disk["per_class_f1"]) == {"red", "green", "blue"}
    assert on_disk["config"]["mode"] == mode
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 5
    _, description, _ = load_model(tmp_path / "best.pt")
    assert description.classes == ("red", "green", "blue") and description.mpp == 2.0
    assert description.tile_size == 32 and description.setting == "S+C"


def test_resume_reproduces_the_same_weights(dataset, tmp_path):
    train(_config(dataset, tmp_path / "straight", epochs=2), progress=False)
    train(_config(dataset, tmp_path / "resumed", epochs=1), progress=False)
    train(_config(dataset, tmp_path / "resumed", epochs=2), resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["log"][1]["loss"] == b["log"][1]["loss"]


def test_resume_refuses_other_settings(dataset, tmp_path):
    train(_config(dataset, tmp_path, epochs=1), progress=False)
    result = CliRunner().invoke(
        train_main, [str(dataset), "-o", str(tmp_path), "--tile", "32", "--setting", "S", "--resume", "-q"]
    )
    assert result.exit_code == 2
    assert "cannot resume" in result.output


def test_cli_train_and_eval(dataset, tmp_path):
    args = [str(dataset), "-o", str(tmp_path / "run"), "--tile", "32", "--epochs", "1", "--batch-size", "8", "-q"]
    result = CliRunner().invoke(train_main, [*args, "--steps-per-epoch", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "macro F1" in result.output and str(tmp_path / "run") in result.output
    result = CliRunner().invoke(
        eval_main, [str(tmp_path / "run" / "best.pt"), str(dataset), "-o", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    assert "green" in result.output
    assert json.loads((tmp_path / "s.json").read_text())["split"] == "test"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "masks" / "img0.png").unlink(), "img0"),
        (lambda root: (root / "dataset.json").unlink(), "dataset.json"),
        (lambda root: (root / "labeled" / "purple").mkdir(parents=True), "purple"),
    ],
)
def test_bad_dataset_is_one_error_line_exit_2(tmp_path, breakage, message):
    root = colour_dataset(tmp_path / "bad")
    breakage(root)
    result = CliRunner().invoke(train_main, [str(root), "-o", str(tmp_path / "run"), "--tile", "32", "-q"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_bad_mask_value_and_size_mismatch(tmp_path):
    from PIL import Image

    root = colour_dataset(tmp_path / "bad")
    Image.fromarray(np.full((128, 128), 7, np.uint8)).save(root / "masks" / "img1.png")
    result = CliRunner().invoke(train_main, [str(root), "-o", str(tmp_path / "r1"), "--tile", "32", "-q"])
    assert result.exit_code == 2 and "img1" in result.output and "Traceback" not in result.output
    root = colour_dataset(tmp_path / "bad2")
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(root / "masks" / "img2.png")
    result = CliRunner().invoke(train_main, [str(root), "-o", str(tmp_path / "r2"), "--tile", "32", "-q"])
    assert result.exit_code == 2 and "img2" in result.output


def test_empty_images_folder(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    (tmp_path / "empty" / "dataset.json").write_text('{"classes": ["a", "b"]}')
    result = CliRunner().invoke(train_main, [str(tmp_path / "empty"), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and result.output.startswith("Error: ")
