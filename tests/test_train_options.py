"""The training options beyond the paper's recipe: CLS tiles per step, CLS loss weight, class balance of the
CLS tiles, HED jitter, and what every run writes (curves.png)."""

import numpy as np
import pytest
import torch
from _train_helpers import colour_dataset
from click.testing import CliRunner

from segcls.cli.train import main as train_main
from segcls.core.errors import SegclsError
from segcls.train import TrainConfig, Trainer, _BalancedCycler, changed_settings


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("ds") / "colours")


def _config(dataset, out, **kw):
    base = dict(dataset=str(dataset), out_dir=str(out), tile=32, batch_size=4, epochs=1, lr=1e-3, device="cpu")
    base.update(setting="S+C", seg_fraction=0.5, steps_per_epoch=2)
    return TrainConfig(**{**base, **kw})


class CountingTrainer(Trainer):
    """Records the SEG and CLS tiles each step trains on."""

    def _losses(self, seg_idx, cls_idx, gen):
        self.steps = [*getattr(self, "steps", []), (seg_idx.copy(), cls_idx.copy())]
        return super()._losses(seg_idx, cls_idx, gen)


def test_cls_batch_size_sets_the_cls_tiles_per_step(dataset, tmp_path):
    trainer = CountingTrainer(_config(dataset, tmp_path, cls_batch_size=7), progress=False)
    trainer.train_epoch()
    assert [(s.size, c.size) for s, c in trainer.steps] == [(4, 7), (4, 7)]
    default = CountingTrainer(_config(dataset, tmp_path / "b"), progress=False)
    default.train_epoch()
    assert [(s.size, c.size) for s, c in default.steps] == [(4, 4), (4, 4)]


def test_cls_weight_scales_the_cls_loss_in_the_total(dataset, tmp_path):
    stats = Trainer(_config(dataset, tmp_path, cls_weight=2.5), progress=False).train_epoch()
    assert stats["loss"] == pytest.approx(stats["seg_loss"] + 2.5 * stats["cls_loss"], rel=1e-5)
    assert stats["cls_loss"] > 0


def test_balance_options_set_the_cls_loss_weights(dataset, tmp_path):
    weights = {}
    for balance in ("loss", "sampler", "none"):
        trainer = Trainer(_config(dataset, tmp_path / balance, cls_balance=balance), progress=False)
        weights[balance] = trainer.cls_weights.tolist()
    labels = np.asarray(trainer.tiles.labels)[trainer.selection.cls]
    counts = np.bincount(labels, minlength=3)
    assert weights["loss"] == pytest.approx((counts.min() / counts).tolist())  # inverse frequency, max 1
    assert weights["sampler"] == weights["none"] == [1.0, 1.0, 1.0]


def test_balanced_sampler_draws_rare_classes_as_often_as_common_ones():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    indices = np.arange(1000, 1100)
    cycler = _BalancedCycler(indices, labels, np.random.default_rng(0))
    drawn = cycler.take(3000)
    assert set(drawn) <= set(indices)
    per_class = np.bincount(labels[drawn - 1000], minlength=3)
    assert per_class.min() > 900 and per_class.max() < 1100
    # within a class, passes are shuffled and complete: the 9 tiles of class 1 each come ~equally often
    ones = np.bincount(drawn[labels[drawn - 1000] == 1] - 1090)
    assert ones.max() - ones.min() <= 1


def test_sampler_run_draws_every_class(dataset, tmp_path):
    trainer = CountingTrainer(_config(dataset, tmp_path, cls_balance="sampler", steps_per_epoch=6), progress=False)
    trainer.train_epoch()
    drawn = np.concatenate([c for _, c in trainer.steps])
    assert len(np.unique(np.asarray(trainer.tiles.labels)[drawn])) == 3


def test_hed_jitter_changes_the_batches_and_zero_keeps_them(dataset, tmp_path):
    plain = Trainer(_config(dataset, tmp_path / "a"), progress=False)
    stained = Trainer(_config(dataset, tmp_path / "b", hed_jitter=0.2), progress=False)
    idx = plain.selection.seg[:4]
    x0, y0 = plain._batch(idx, torch.Generator().manual_seed(3))
    x1, y1 = stained._batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(y0, y1) and not torch.allclose(x0, x1)
    again, _ = plain._batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(x0, again)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cls_batch_size": 8, "mode": "joint"}, "two-step mode"),
        ({"cls_batch_size": 0}, "cls batch size must be >= 1"),
        ({"cls_weight": -1.0}, "cls weight must be >= 0"),
        ({"cls_balance": "oversample"}, "cls balance must be one of loss, sampler, none"),
        ({"hed_jitter": 1.5}, "HED jitter must be in"),
    ],
)
def test_bad_options_are_one_clear_error(dataset, tmp_path, options, message):
    with pytest.raises(SegclsError, match=message):
        _config(dataset, tmp_path, **options).validate()


def test_old_configs_without_the_new_options_still_match(dataset, tmp_path):
    """A checkpoint or metrics.json written before these options existed has the paper's values."""
    config = _config(dataset, tmp_path)
    saved = {k: v for k, v in vars(config).items() if k not in ("cls_batch_size", "cls_weight", "cls_balance")}
    saved.pop("hed_jitter")
    assert changed_settings(saved, config) == []
    assert changed_settings(saved, _config(dataset, tmp_path, cls_weight=2.0)) == ["cls_weight"]


def test_cli_run_writes_curves_next_to_the_log(dataset, tmp_path):
    out = tmp_path / "run"
    args = [str(dataset), "-o", str(out), "--tile", "32", "--batch-size", "4", "--epochs", "2"]
    args += ["--steps-per-epoch", "2", "--device", "cpu", "-q", "--cls-weight", "0.5", "--hed-jitter", "0.05"]
    args += ["--cls-balance", "sampler", "--cls-batch-size", "6"]
    r = CliRunner().invoke(train_main, args)
    assert r.exit_code == 0, r.output
    curves = (out / "curves.png").read_bytes()
    assert curves[:8] == b"\x89PNG\r\n\x1a\n" and len(curves) > 5000
    assert len((out / "log.csv").read_text().splitlines()) == 3
