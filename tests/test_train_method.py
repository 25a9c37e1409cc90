"""The paper's mechanism, tested from its behaviour: what each loss teaches, what joint mode's targets are, and
that the class weights really weight both losses.

The dataset: three classes told apart by colour; the annotated images' masks hold only red and green, and
blue exists only as labeled/ images (image-level labels). So blue can be learnt from the classification loss
alone: a run that drops it cannot tell blue tiles from the others.
"""

import os
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _data_helpers import write_dataset
from _train_helpers import COLOURS
from torch.utils._python_dispatch import TorchDispatchMode

from segcls.core.constants import UNLABELLED
from segcls.data.augment import normalize
from segcls.data.tiles import SEG
from segcls.train import TrainConfig, Trainer, class_weights

RED, GREEN, BLUE = 0, 1, 2
T = 32


def _paint(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = COLOURS[np.minimum(mask, BLUE)].astype(np.int16) + rng.integers(-30, 30, (*mask.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def blue_only_labeled(root, seed=0):
    """Annotated 64x64 images of red/green tiles (pure ones are CLS, half-half ones SEG; red is 3x rarer than
    green), plus labeled/blue/ images: blue appears in no mask."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for i in range(6):
        mask = np.full((2 * T, 2 * T), GREEN, np.uint8)
        mask[:T, :T] = RED  # a pure red CLS tile
        mask[T:, T : T + T // 2] = RED  # a red|green SEG tile, 1/2 red
        mask[T:, :8] = RED  # a green SEG tile, 1/4 red
        if i % 2:
            mask[:T, T:] = 255  # unlabelled: an ignored tile
        pairs[f"img{i}"] = (_paint(mask, rng), mask)
    labeled = [_paint(np.full((2 * T, 2 * T), BLUE, np.uint8), rng) for _ in range(3)]
    split = {"train": ["img0", "img1", "img2", "img3"], "val": ["img4"], "test": ["img5"]}
    return write_dataset(root, pairs, ("red", "green", "blue"), labeled={"blue": labeled}, split=split, mpp=2.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return blue_only_labeled(tmp_path_factory.mktemp("blue") / "ds")


def _trainer(dataset, out, **kw):
    base = dict(dataset=str(dataset), out_dir=str(out), tile=T, batch_size=8, lr=1e-3, device="cpu", epochs=1)
    return Trainer(TrainConfig(**{**base, **kw}), progress=False)


def _blue_class_share(trainer) -> float:
    """Share of fresh blue tiles (never seen in training) that the classification layer calls blue."""
    tiles = _paint(np.full((16, T, T), BLUE, np.uint8), np.random.default_rng(99))
    x = normalize(torch.from_numpy(tiles), trainer.description.mean, trainer.description.std)
    trainer.model.eval()
    with torch.no_grad():
        pred = trainer.model(x, full_res=False).class_scores.argmax(1)
    return float((pred == BLUE).float().mean())


@pytest.mark.parametrize("mode", ["two-step", "joint"])
def test_a_class_with_image_labels_only_is_learnt_from_the_cls_tiles(dataset, tmp_path, mode):
    """S+C* sees labeled/blue tiles and learns blue; S (the same SEG tiles, no CLS tiles) cannot. In two-step
    mode the SEG batches never hold blue, so only the classification loss can teach it; in joint mode the blue
    tiles' constant masks teach it through the pixel loss as well."""
    short = dict(mode=mode, steps_per_epoch=5, batch_size=4)  # 4 steps already give 16/16 against 0/16
    with_cls = _trainer(dataset, tmp_path / "sc", setting="S+C*", **short)
    assert BLUE in np.asarray(with_cls.tiles.labels)[with_cls.selection.cls]
    with_cls.train_epoch()
    assert _blue_class_share(with_cls) >= 0.8
    seg_only = _trainer(dataset, tmp_path / "s", setting="S", **short)
    assert BLUE not in np.asarray(seg_only.tiles.labels)[seg_only.selection.cls]
    seg_only.train_epoch()
    assert _blue_class_share(seg_only) <= 0.2


def _first_batch(trainer):
    """The SEG and CLS tiles of a batch: every SEG tile, and CLS tiles with labeled/ ones among them."""
    sel = trainer.selection
    labeled = sel.cls[trainer.tiles.from_labeled[sel.cls]]
    annotated = sel.cls[~trainer.tiles.from_labeled[sel.cls]]
    return sel.seg[:4], np.concatenate([annotated[:2], labeled[:2]])


def _outputs(trainer, seg_idx, cls_idx, seed):
    """The augmented batch `_losses` sees (same generator seed) and the eval-mode model outputs on it."""
    x, y = trainer._batch(np.concatenate([seg_idx, cls_idx]), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return trainer.model(x), y


def test_joint_mode_targets(dataset, tmp_path):
    """Joint: one mixed batch; CLS tiles get a constant mask of their label (labeled/ tiles have no mask at all,
    annotated ones are only mostly their label), SEG tiles get their majority class as label."""
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode="joint")
    seg_idx, cls_idx = _first_batch(trainer)
    labels = torch.from_numpy(np.asarray(trainer.tiles.labels[cls_idx], np.int64))
    trainer.model.eval()
    with torch.no_grad():
        total, seg_loss, cls_loss = trainer._losses(seg_idx, cls_idx, torch.Generator().manual_seed(3))
    out, y = _outputs(trainer, seg_idx, cls_idx, seed=3)
    y[len(seg_idx) :] = labels[:, None, None]
    seg_masks = y[: len(seg_idx)]
    majority = torch.tensor([np.bincount(m[m != UNLABELLED].ravel(), minlength=3).argmax() for m in seg_masks])
    want_seg = F.cross_entropy(out.logits, y, trainer.seg_weights, ignore_index=UNLABELLED)
    want_cls = F.cross_entropy(out.class_scores, torch.cat([majority, labels]), trainer.cls_weights)
    assert seg_loss.item() == pytest.approx(want_seg.item(), rel=1e-5)
    assert cls_loss.item() == pytest.approx(want_cls.item(), rel=1e-5)
    assert total.item() == pytest.approx(want_seg.item() + want_cls.item(), rel=1e-5)


def test_two_step_losses(dataset, tmp_path):
    """Two-step: the pixel loss on the SEG batch (full resolution) plus the class loss on the CLS batch."""
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode="two-step")
    seg_idx, cls_idx = _first_batch(trainer)
    trainer.model.eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        total, seg_loss, cls_loss = trainer._losses(seg_idx, cls_idx, gen)
        gen = torch.Generator().manual_seed(5)  # replay: the SEG batch, then the CLS batch, from one generator
        x, y = trainer._batch(seg_idx, gen)
        want_seg = F.cross_entropy(trainer.model(x).logits, y, trainer.seg_weights, ignore_index=UNLABELLED)
        x, _ = trainer._batch(cls_idx, gen)
        labels = torch.from_numpy(np.asarray(trainer.tiles.labels[cls_idx], np.int64))
        want_cls = F.cross_entropy(trainer.model(x, full_res=False).class_scores, labels, trainer.cls_weights)
    assert seg_loss.item() == pytest.approx(want_seg.item(), rel=1e-5)
    assert cls_loss.item() == pytest.approx(want_cls.item(), rel=1e-5)
    assert total.item() == pytest.approx(want_seg.item() + want_cls.item(), rel=1e-5)
    assert cls_loss.item() > 0.1 and seg_loss.item() > 0.1  # an untrained model: both terms count


def _selected_counts(trainer):
    seg_masks = np.asarray(trainer.tiles.masks[trainer.selection.seg])
    pixels = np.bincount(seg_masks[seg_masks != UNLABELLED], minlength=3)
    labels = np.bincount(np.asarray(trainer.tiles.labels[trainer.selection.cls]), minlength=3)
    return pixels, labels


@pytest.mark.parametrize("mode", ["two-step", "joint"])
def test_class_weights_are_inverse_frequency_of_what_each_loss_sees(dataset, tmp_path, mode):
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode=mode)
    pixels, labels = _selected_counts(trainer)
    assert (trainer.tiles.kinds[trainer.selection.seg] == SEG).all()
    if mode == "joint":  # CLS tiles are whole-tile masks of their label too
        pixels = pixels + labels * T * T
    np.testing.assert_allclose(trainer.seg_weights.numpy(), class_weights(pixels).numpy())
    np.testing.assert_allclose(trainer.cls_weights.numpy(), class_weights(labels).numpy())
    assert trainer.seg_weights.min() < 0.9 and trainer.cls_weights.min() < 0.9  # unequal: they matter


@pytest.mark.parametrize("mode", ["two-step", "joint"])
def test_class_weights_change_each_loss_and_its_gradient(dataset, tmp_path, mode):
    """Reweighting a class changes the seg loss (through seg_weights) and the cls loss (through cls_weights),
    and so the gradient each one gives."""
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode=mode)
    seg_idx, cls_idx = _first_batch(trainer)
    trainer.model.eval()  # batch norm from running stats: the same batch gives the same outputs

    def run(seg_w, cls_w):
        trainer.seg_weights, trainer.cls_weights = seg_w, cls_w
        _, seg_loss, cls_loss = trainer._losses(seg_idx, cls_idx, torch.Generator().manual_seed(7))
        grads = []
        for loss in (seg_loss, cls_loss):
            trainer.model.zero_grad()
            loss.backward(retain_graph=True)
            grads.append(trainer.model.encoder.conv1.weight.grad.clone())
        return seg_loss.item(), cls_loss.item(), grads

    ones = torch.ones(3)
    skew = torch.tensor([1.0, 0.05, 0.3])
    seg0, cls0, (g_seg0, g_cls0) = run(ones, ones)
    seg1, cls1, (g_seg1, g_cls1) = run(skew, ones)
    assert abs(seg1 - seg0) > 1e-3 * seg0 and cls1 == pytest.approx(cls0, rel=1e-6)
    assert not torch.allclose(g_seg1, g_seg0, rtol=1e-3, atol=0) and torch.allclose(g_cls1, g_cls0)
    seg2, cls2, (_, g_cls2) = run(ones, skew)
    assert abs(cls2 - cls0) > 1e-3 * cls0 and seg2 == pytest.approx(seg0, rel=1e-6)
    assert not torch.allclose(g_cls2, g_cls0, rtol=1e-3, atol=0)


def test_each_pass_over_a_tile_pool_sees_every_tile_once():
    from segcls.train import _Cycler

    cycler = _Cycler(np.array([3, 5, 8, 13, 21]), np.random.default_rng(0))
    drawn = np.concatenate([cycler.take(3), cycler.take(4), cycler.take(8)])  # 3 passes, across batch borders
    for p in range(3):
        assert sorted(drawn[5 * p : 5 * p + 5]) == [3, 5, 8, 13, 21]


def test_epoch_stats_count_tiles_and_time(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode="two-step", steps_per_epoch=2, batch_size=2)
    start = time.perf_counter()
    stats = trainer.train_epoch()
    wall = time.perf_counter() - start
    assert 0.8 * wall <= stats["seconds"] <= wall  # the epoch is all that ran
    assert stats["tiles_per_s"] * stats["seconds"] == pytest.approx(2 * (2 + 2))  # 2 steps of 2 SEG + 2 CLS tiles
    assert stats["loss"] == pytest.approx(stats["seg_loss"] + stats["cls_loss"], rel=1e-5)


class _HostReads(TorchDispatchMode):
    """Counts the tensor -> Python number reads (`.item()`, `float(t)`: aten::_local_scalar_dense, a host
    sync on CUDA) made by segcls/train.py's own lines."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frame = sys._getframe(1)  # up through torch's private dispatch machinery to the line that asked
            while frame and f"{os.sep}torch{os.sep}_" in frame.f_code.co_filename:
                frame = frame.f_back
            self.count += bool(frame and frame.f_code.co_filename.endswith(os.path.join("segcls", "train.py")))
        return func(*args, **(kwargs or {}))


def test_a_training_step_syncs_with_the_device_only_to_log(dataset, tmp_path):
    """Losses are summed where they are made and read back once per LOG_EVERY steps (progress bar) and
    per epoch: each read of a device tensor is a host sync on CUDA (the optimizer's and the augmentation's
    reads are of CPU tensors). The steps run with cuDNN autotuning on (one tile size), restored after."""
    trainer = _trainer(dataset, tmp_path, setting="S+C*", mode="two-step", steps_per_epoch=2, batch_size=2)
    trainer.log_every = 1  # the default, LOG_EVERY, is 10
    seen = []
    trainer.model.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    before = torch.backends.cudnn.benchmark
    for progress, syncs in ((False, 0), (True, 2)):
        trainer.progress = progress
        with _HostReads() as reads:
            stats = trainer.train_epoch()
        assert reads.count == syncs, f"{reads.count} host syncs in 2 steps (progress {progress})"
        assert stats["loss"] == pytest.approx(stats["seg_loss"] + stats["cls_loss"], rel=1e-5)
    assert seen and all(seen) and torch.backends.cudnn.benchmark == before
