"""Behaviour of segcls.train that mutation testing found unguarded (docs/mutation.md): the checks of a
TrainConfig, the device names, what a run writes (log.csv, best.pt, metrics.json) and prints, resuming a
finished run. Through TrainConfig / train / class_weights and the files a run leaves, so the tests survive a
reshuffle of the Trainer's insides."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
from _train_helpers import colour_dataset

from segcls.checkpoint import load_checkpoint
from segcls.core.errors import SegclsError
from segcls.train import TrainConfig, class_weights, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("ds") / "colours", n_images=6, size=64)


def _config(dataset, out, **kw) -> TrainConfig:
    base = dict(dataset=str(dataset), out_dir=str(out), tile=32, batch_size=4, epochs=3, steps_per_epoch=2)
    return TrainConfig(**{**base, "lr": 1e-3, "device": "cpu", **kw})


def _log(run) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_default_config_is_valid_and_the_command_defaults_to_it():
    """`train(TrainConfig(DS, RUN))` and `segcls-train DS -o RUN` run the same experiment (tile, seeds, split...)."""
    from dataclasses import asdict

    from segcls.cli.train import main

    config = TrainConfig(dataset="ds", out_dir="run")
    config.validate()
    defaults = {k: v for k, v in asdict(config).items() if k not in ("dataset", "out_dir")}
    command = {p.name: p.default for p in main.params if p.name in defaults}
    shared = {"tile", "seed", "split_seed", "setting", "seg_fraction", "epochs", "batch_size", "lr", "mode"}
    assert shared <= set(command)
    assert command == {k: v for k, v in defaults.items() if k in command}


@pytest.mark.parametrize("name", ["seg_fraction", "cls_fraction"])
def test_fractions_are_checked_inclusive_of_0_and_1(dataset, tmp_path, name):
    for ok in (0.0, 1.0):
        _config(dataset, tmp_path, **{name: ok}).validate()
    for bad in (-0.01, 1.01):
        with pytest.raises(SegclsError, match=f"{name.replace('_', ' ')} must be in \\[0, 1\\], got {bad}"):
            _config(dataset, tmp_path, **{name: bad}).validate()


def test_each_task_takes_its_own_settings(dataset, tmp_path):
    for setting in ("C", "S+C", "S*+C"):
        _config(dataset, tmp_path, task="cls", setting=setting).validate()
    for setting in ("C", "S*+C"):
        with pytest.raises(SegclsError, match="seg task settings are S, S\\+C, S\\+C\\*"):
            _config(dataset, tmp_path, task="seg", setting=setting).validate()
    with pytest.raises(SegclsError, match="cls task settings are C, S\\+C, S\\*\\+C"):
        _config(dataset, tmp_path, task="cls", setting="S+C*").validate()


def test_device_names(dataset, tmp_path):
    with pytest.raises(SegclsError, match="device must be auto, cpu or cuda, got 'gpu'"):
        train(_config(dataset, tmp_path / "gpu", device="gpu"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(SegclsError, match="--device cuda asked for, but torch sees no CUDA GPU"):
            train(_config(dataset, tmp_path / "cuda", device="cuda"), progress=False)


def test_class_weights_of_a_class_seen_once():
    """The rarest class gets weight 1 also when it was seen exactly once (1 / 1 is the largest inverse)."""
    assert class_weights([1, 4]).tolist() == pytest.approx([1.0, 0.25])
    with warnings.catch_warnings():  # setting S has no CLS tiles: all-zero counts, every run, without a warning
        warnings.simplefilter("error")
        assert class_weights([0, 0]).tolist() == [1.0, 1.0]


def test_a_quiet_run_prints_nothing_and_logs_every_epoch(dataset, tmp_path, capfd):
    """progress=False (the commands' -q): no bar and no epoch line; log.csv has one row per epoch with its
    step count, the epoch's mean losses (loss = seg + cls) and its speed; best.pt is the best epoch."""
    metrics = train(_config(dataset, tmp_path, setting="S+C*"), progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    rows = _log(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["steps"]) for r in rows] == [2, 4, 6]
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["seg_loss"]) + float(r["cls_loss"]), rel=1e-5)
        assert 0 < float(r["seg_loss"]) < 5 and 0 < float(r["cls_loss"]) < 5  # means, not sums, of the steps
        assert float(r["tiles_per_s"]) * float(r["seconds"]) == pytest.approx(2 * (4 + 4))  # two-step
    scores = [float(r["val_macro_f1"]) for r in rows]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == scores.index(max(scores)) + 1
    assert metrics["best_val_score"] == pytest.approx(max(scores))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_a_run_with_progress_shows_the_epoch_in_its_bar_and_one_line_after_it(dataset, tmp_path, capfd):
    train(_config(dataset, tmp_path, epochs=1), progress=True)
    out, err = capfd.readouterr()
    assert "epoch 1/1: loss" in out  # the line once the epoch is validated
    assert "epoch 1/1:" in err.replace("epoch 1/1: loss", "")  # the bar while it trains


def test_the_cls_task_keeps_the_epoch_of_best_classification_accuracy(dataset, tmp_path):
    metrics = train(_config(dataset, tmp_path, task="cls", setting="S*+C", epochs=3), progress=False)
    accuracy = [float(r["val_cls_accuracy"]) for r in _log(tmp_path)]
    assert max(accuracy) > 0
    assert metrics["best_val_score"] == pytest.approx(max(accuracy))
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == accuracy.index(max(accuracy)) + 1
    assert load_checkpoint(tmp_path / "best.pt")["description"]["setting"] == "cls:S*+C"


def test_resuming_a_run_that_has_its_epochs_trains_no_more(dataset, tmp_path):
    train(_config(dataset, tmp_path, epochs=2), progress=False)
    before = (tmp_path / "log.csv").read_text()
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    metrics = train(_config(dataset, tmp_path, epochs=1), resume=True, progress=False)
    assert (tmp_path / "log.csv").read_text() == before
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["epoch"] == 2 and all(torch.equal(v, after["model"][k]) for k, v in weights.items())
    assert json.loads((tmp_path / "metrics.json").read_text())["macro_f1"] == metrics["macro_f1"]


def test_a_joint_step_trains_one_batch_of_both_kinds(dataset, tmp_path):
    """Joint mode: each step's one batch is half SEG, half CLS tiles, batch_size in all (two-step: one of each)."""
    train(_config(dataset, tmp_path, setting="S+C*", mode="joint", epochs=1), progress=False)
    (row,) = _log(tmp_path)
    assert float(row["tiles_per_s"]) * float(row["seconds"]) == pytest.approx(2 * 4)
