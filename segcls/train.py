"""The paper's training: masked tiles teach segmentation, label-only tiles correct it through the
parameter-free classification layer; L = L_seg + L_cls (1:1), Adam 1e-4.

two-step (paper, default): per step, a batch of SEG tiles -> pixel cross-entropy on the full-resolution
logits, and a batch of CLS tiles -> cross-entropy on the class scores; one optimiser step on the sum.
joint (released code): one forward on a mixed batch; every tile gets both losses (CLS tiles a constant mask
of their label, SEG tiles their majority class as label).

The number of optimiser steps per epoch is the same for every setting and fraction (set by the size of the
whole training tile pool), so S / S+C / S+C* differ in the data they see, not in compute. All randomness of an
epoch derives from (seed, epoch), which is what makes `--resume` continue bit for bit.

Under torchrun (segcls/distributed.py) every rank draws the same global batch and the same augmentation
draws, and reads, augments and trains on its 1/N of the SEG and of the CLS tiles (DistributedDataParallel
averages the gradients); rank 0 alone validates and writes files. BatchNorm keeps per-rank batch statistics
(SyncBatchNorm runs on GPUs only) and each rank's loss is the mean over its share, so N ranks match one
process within a tolerance (tests/test_ddp.py), not bit for bit.

On CUDA: tiles go to the GPU from page-locked memory (asynchronous copies), cuDNN autotunes its convolutions
for the run's one tile size (`cudnn.benchmark` while training, off again for validation's whole images),
and the losses are summed on the device and read back once per LOG_EVERY steps (progress bar) and epoch,
not with a host sync every step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from segcls import distributed
from segcls.checkpoint import load_checkpoint, save_checkpoint
from segcls.core.atomic import atomic_path
from segcls.core.constants import UNLABELLED, check_multiple
from segcls.core.description import ModelDescription
from segcls.core.errors import CheckpointError, SegclsError
from segcls.curves import plot_curves
from segcls.data.augment import augment_batch
from segcls.data.blocks import spatial_dataset
from segcls.data.cache import TileSet, build_tileset
from segcls.data.folder import open_dataset
from segcls.data.settings import CLS_TASK_SETTINGS, SETTINGS, Selection, select_tiles, select_tiles_cls_task
from segcls.evaluate import classification_accuracy, evaluate_images, evaluate_pairs, load_pairs
from segcls.model import SegClsNet, build_model
from segcls.pretrained import load_encoder

MODES = ("two-step", "joint")
TASKS = ("seg", "cls")
# How classification tiles of rare classes are made to count: "loss" (the paper) weights the classification
# loss by inverse class frequency; "sampler" draws the tiles of each step class-balanced (every class
# equally often) with an unweighted loss; "none" does neither.
CLS_BALANCES = ("loss", "sampler", "none")
LOG_FIELDS = (
    "epoch",
    "steps",
    "loss",
    "seg_loss",
    "cls_loss",
    "val_macro_f1",
    "val_micro_f1",
    "val_cls_accuracy",
    "tiles_per_s",
    "seconds",
)
# What a run folder holds: a folder with any of them holds a run, which is continued or replaced, never
# trained over (check_run_folder).
RUN_FILES = ("best.pt", "last.pt", "log.csv", "metrics.json")
LOG_EVERY = 10  # steps between progress-bar updates, each a host sync on CUDA


@dataclass
class TrainConfig:
    dataset: str
    out_dir: str
    setting: str = "S+C"
    seg_fraction: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    tile: int = 128
    lr: float = 1e-4
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    pretrained: str | None = None
    mode: str = "two-step"
    steps_per_epoch: int | None = None  # None: one pass over the whole training tile pool
    task: str = "seg"  # "cls": the reverse experiment, varying the CLS fraction (CLS_TASK_SETTINGS)
    cls_fraction: float = 1.0  # used by task "cls" only
    cls_batch_size: int | None = None  # CLS tiles per step in two-step mode; None: batch_size (the paper)
    cls_weight: float = 1.0  # L = L_seg + cls_weight * L_cls (the paper: 1)
    cls_balance: str = "loss"  # CLS_BALANCES
    hed_jitter: float = 0.0  # HED stain jitter strength (segcls.data.augment); 0 = off (the paper)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise SegclsError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        settings = SETTINGS if self.task == "seg" else CLS_TASK_SETTINGS
        if self.setting not in settings:
            raise SegclsError(f"{self.task} task settings are {', '.join(settings)}, got {self.setting!r}")
        if not 0.0 <= self.cls_fraction <= 1.0:
            raise SegclsError(f"cls fraction must be in [0, 1], got {self.cls_fraction}")
        if self.mode not in MODES:
            raise SegclsError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.cls_balance not in CLS_BALANCES:
            raise SegclsError(f"cls balance must be one of {', '.join(CLS_BALANCES)}, got {self.cls_balance!r}")
        if self.cls_batch_size is not None and self.mode != "two-step":
            raise SegclsError("a CLS batch size is for two-step mode (joint mode splits one batch between the kinds)")
        if self.cls_batch_size is not None and self.cls_batch_size < 1:
            raise SegclsError(f"cls batch size must be >= 1, got {self.cls_batch_size}")
        if not self.cls_weight >= 0:
            raise SegclsError(f"cls weight must be >= 0, got {self.cls_weight}")
        if not 0 <= self.hed_jitter < 1:
            raise SegclsError(f"HED jitter must be in [0, 1), got {self.hed_jitter}")
        if not 0.0 <= self.seg_fraction <= 1.0:
            raise SegclsError(f"seg fraction must be in [0, 1], got {self.seg_fraction}")
        check_multiple("tile", self.tile, minimum=32)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SegclsError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegclsError("--device cuda asked for, but torch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise SegclsError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse class frequency, normalised so the largest weight is 1 (absent classes get 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    if inv.max() == 0:
        return torch.ones(len(counts))
    w = inv / inv.max()
    w[counts == 0] = 1.0
    return torch.tensor(w, dtype=torch.float32)


class _Cycler:
    """Endless shuffled passes over a set of indices, driven by one numpy Generator."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices, self.rng, self.order, self.pos = indices, rng, np.empty(0, np.int64), 0

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.pos >= self.order.size:
                self.order, self.pos = self.rng.permutation(self.indices), 0
            chunk = self.order[self.pos : self.pos + n]
            out.append(chunk)
            self.pos += chunk.size
            n -= chunk.size
        return np.concatenate(out)


class _BalancedCycler:
    """Class-balanced draws: each tile's class is uniform over the classes present, and within a class
    the tiles come in endless shuffled passes (so rare classes repeat more often, common ones less)."""

    def __init__(self, indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.classes = np.unique(labels)
        self.rng = rng
        self.cyclers = [_Cycler(indices[labels == c], rng) for c in self.classes]

    def take(self, n: int) -> np.ndarray:
        which = self.rng.integers(len(self.classes), size=n)
        out = np.empty(n, np.int64)
        for k, cycler in enumerate(self.cyclers):
            hits = np.flatnonzero(which == k)
            if hits.size:
                out[hits] = cycler.take(hits.size)
        return out


def check_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """A folder that holds a run is continued (`resume`) or replaced (`overwrite`), never trained over: a
    finished run's best.pt is never lost without a word."""
    if resume and overwrite:
        raise SegclsError("--resume continues a run and --overwrite replaces it: choose one")
    found = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if found and not (resume or overwrite):
        raise SegclsError(f"{out_dir} holds a run ({', '.join(found)}): --resume continues it, --overwrite replaces it")


class Trainer:
    """Holds the model, data and optimiser of one run; `run()` trains to `config.epochs`.

    `resume`: continue from out_dir/last.pt; `overwrite`: replace the run out_dir holds (its files are
    removed once the dataset has been read, just before training). Without either, a folder that holds a
    run is refused (check_run_folder)."""

    def __init__(
        self, config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
    ) -> None:
        config.validate()
        check_run_folder(config.out_dir, resume, overwrite)
        self.ranks = distributed.from_env()
        if config.batch_size % self.ranks.world_size:
            n = self.ranks.world_size
            raise SegclsError(f"batch size {config.batch_size} does not split evenly over {n} torchrun ranks")
        self.config, self.progress = config, progress and self.ranks.main
        self.log_every = LOG_EVERY  # steps between progress-bar updates (each reads the losses back)
        progress = self.progress
        self.out_dir = Path(config.out_dir)
        self.device = distributed.device_for(self.ranks, resolve_device(config.device))
        distributed.init(self.ranks, self.device)
        self.dataset = open_dataset(config.dataset, split_seed=config.split_seed)
        if not self.dataset.split.get("train"):
            raise SegclsError(f"{config.dataset}: the 'train' split has no images")
        with distributed.main_first(self.ranks):  # too few images for a validation split: blocks of them
            self.dataset, warning = spatial_dataset(
                self.dataset, tile=config.tile, seed=config.split_seed, progress=progress
            )
        if warning and self.ranks.main:
            tqdm.write(f"Warning: {warning}", file=sys.stderr)
        with distributed.main_first(self.ranks):  # one process builds the tile caches, the others read them
            self.tiles: TileSet = build_tileset(self.dataset, "train", config.tile, progress=progress)
            self.val_tiles: TileSet = build_tileset(self.dataset, "val", config.tile, progress=progress)
        if config.task == "seg":
            self.selection: Selection = select_tiles(self.tiles, config.setting, config.seg_fraction, config.seed)
        else:
            self.selection = select_tiles_cls_task(self.tiles, config.setting, config.cls_fraction, config.seed)
        if self.selection.seg.size == 0 and self.selection.cls.size == 0:
            raise SegclsError(f"{config.dataset}: no training tiles for {config.setting} at s={config.seg_fraction}")
        if overwrite and self.ranks.main:  # the inputs are good: now the old run goes
            for name in RUN_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # The classification layer is scored on the validation split's CLS tiles (val_tiles) every epoch; the
        # reverse experiment (task "cls") also selects its best epoch by that accuracy. Validation images are
        # decoded once here and scored every epoch, by rank 0 alone.
        self.val_pairs = load_pairs(self.dataset, self.dataset.split["val"]) if self.ranks.main else []
        self.description = ModelDescription(
            classes=self.dataset.classes,
            colors=self.dataset.colors,
            mpp=self.dataset.mpp,
            tile_size=config.tile,
            setting=config.setting if config.task == "seg" else f"cls:{config.setting}",
            seg_fraction=config.seg_fraction if config.task == "seg" else None,
        )
        num_classes = self.description.num_classes
        self.steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(self.tiles) / config.batch_size))

        torch.manual_seed(config.seed)
        # channels-last: oneDNN's CPU convolutions (and tensor cores under AMP) run NHWC faster; 15-20 % per
        # training step on 2 EPYC cores. Values are the same; checkpoints load into a default-layout model.
        self.model: SegClsNet = build_model(num_classes)
        if config.pretrained and not resume:  # a resumed run's weights come from its checkpoint
            with distributed.main_first(self.ranks):  # rank 0 downloads, the others read its cached file
                loaded = load_encoder(self.model.encoder, config.pretrained, progress=progress)
            if self.progress:
                tqdm.write(str(loaded))
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999))
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.seg_weights, self.cls_weights = self._class_weights(num_classes)
        self.epoch, self.best_score, self.log_rows = 0, -1.0, []
        if resume:
            self._resume()
        self.net = self.model  # what the training steps call: the DDP wrapper under torchrun
        if self.ranks.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            if self.ranks.main:  # said even with --quiet: the per-rank batch is part of the setup
                n, kinds = self.ranks.world_size, " of each kind" if config.mode == "two-step" else ""
                tqdm.write(
                    f"torchrun: {n} ranks on {self.device.type}; the batch size {config.batch_size} is global: "
                    f"{config.batch_size // n} tiles{kinds} per rank and step"
                )

    # -- setup -------------------------------------------------------------------------------------
    def _class_weights(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_counts = np.zeros(num_classes, dtype=np.int64)
        if self.selection.seg.size:
            masks = np.asarray(self.tiles.masks[np.sort(self.selection.seg)])
            pixel_counts += np.bincount(masks[masks != UNLABELLED], minlength=num_classes)[:num_classes]
        label_counts = np.bincount(np.asarray(self.tiles.labels[self.selection.cls]), minlength=num_classes)
        label_counts = label_counts[:num_classes]
        if self.config.mode == "joint":  # every tile carries both kinds of target
            pixel_counts += label_counts * self.config.tile**2
        seg, cls = class_weights(pixel_counts), class_weights(label_counts)
        if self.config.cls_balance != "loss":  # balanced by the sampler, or not at all
            cls = torch.ones(num_classes)
        return seg.to(self.device), cls.to(self.device)

    def _resume(self) -> None:
        last = self.out_dir / "last.pt"
        payload = load_checkpoint(last)
        saved = payload.get("config", {})
        changed = changed_settings(saved, self.config)
        if changed:
            raise CheckpointError(f"{last} was trained with other settings ({', '.join(changed)}): cannot resume")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        self.epoch = int(payload["epoch"])
        self.best_score = float(payload["best_score"])
        self.log_rows = list(payload.get("log", []))

    # -- one epoch ---------------------------------------------------------------------------------
    def _batch(self, idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the augmented global batch `idx` (all of it in one process), on the device.
        The augmentation takes the whole batch's random draws, so a rank's rows are augmented exactly as one
        process would augment them."""
        share = distributed.share(self.ranks)
        mine = idx[share]
        order = np.sort(mine)  # memmap-friendly read, then restore the sampled order
        rank = np.argsort(np.argsort(mine, kind="stable"), kind="stable")
        images = torch.from_numpy(np.asarray(self.tiles.images[order])[rank])
        masks = torch.from_numpy(np.asarray(self.tiles.masks[order])[rank])
        mean, std = self.description.mean, self.description.std
        x, y = augment_batch(
            images, masks, gen, mean, std, share=share, batch_size=idx.size, hed=self.config.hed_jitter
        )
        return self._to_device(x).contiguous(memory_format=torch.channels_last), self._to_device(y)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A copy on the GPU that does not stall the host (from page-locked memory), or `t` on the CPU."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _losses(self, seg_idx: np.ndarray, cls_idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Losses on this rank's share `s` of the global SEG and CLS batches (all of them in one process)."""
        s = distributed.share(self.ranks)
        zero = torch.zeros((), device=self.device)
        labels = torch.from_numpy(np.asarray(self.tiles.labels[cls_idx], dtype=np.int64)).to(self.device)
        if self.config.mode == "two-step":
            seg_loss = cls_loss = zero
            if seg_idx.size:
                x, y = self._batch(seg_idx, gen)  # augmented outside autocast: in float32
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    out = self.net(x)
                seg_loss = F.cross_entropy(out.logits.float(), y, self.seg_weights, ignore_index=UNLABELLED)
            if cls_idx.size:
                x, _ = self._batch(cls_idx, gen)
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    out = self.net(x, full_res=False)
                cls_loss = F.cross_entropy(out.class_scores.float(), labels[s], self.cls_weights)
        else:
            idx = np.concatenate([seg_idx, cls_idx])
            x, y = self._batch(idx, gen)
            rows = np.arange(idx.size)[s]  # the global batch's rows of this rank's share
            cls_rows = torch.from_numpy(np.flatnonzero(rows >= seg_idx.size)).to(self.device)
            cls_labels = labels[torch.from_numpy(rows[rows >= seg_idx.size] - seg_idx.size).to(self.device)]
            y[cls_rows] = cls_labels[:, None, None]  # CLS tiles: constant mask of their label
            tile_labels = _majority(y, self.description.num_classes)  # SEG tiles: their majority class
            tile_labels[cls_rows] = cls_labels
            with torch.autocast(self.device.type, enabled=self.use_amp):
                out = self.net(x)
            seg_loss = F.cross_entropy(out.logits.float(), y, self.seg_weights, ignore_index=UNLABELLED)
            cls_loss = F.cross_entropy(out.class_scores.float(), tile_labels, self.cls_weights)
        return seg_loss + self.config.cls_weight * cls_loss, seg_loss, cls_loss

    def train_epoch(self) -> dict:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, self.epoch])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # the same on every rank, as is `rng`
        seg = _Cycler(self.selection.seg, rng) if self.selection.seg.size else None
        cls = None
        if self.selection.cls.size:
            labels = np.asarray(self.tiles.labels[self.selection.cls])
            balanced = cfg.cls_balance == "sampler"
            cls = _BalancedCycler(self.selection.cls, labels, rng) if balanced else _Cycler(self.selection.cls, rng)
        # Joint mode shares one batch between the two kinds; two-step gives each its own batch.
        n_seg = cfg.batch_size if cls is None or cfg.mode == "two-step" else cfg.batch_size // 2
        n_cls = cfg.batch_size if seg is None or cfg.mode == "two-step" else cfg.batch_size - n_seg
        if cfg.mode == "two-step" and cfg.cls_batch_size:
            n_cls = cfg.cls_batch_size
        self.model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, seg, cls: summed where made
        tiles, start = 0, time.perf_counter()
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            leave=False,
        )
        with _cudnn_benchmark():
            for step in bar:
                seg_idx = seg.take(n_seg) if seg else np.empty(0, np.int64)
                cls_idx = cls.take(n_cls) if cls else np.empty(0, np.int64)
                loss, seg_loss, cls_loss = self._losses(seg_idx, cls_idx, gen)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                totals += torch.stack([loss.detach(), seg_loss.detach(), cls_loss.detach()]).double()
                tiles += seg_idx.size + cls_idx.size
                if self.progress and (step + 1) % self.log_every == 0:  # a host sync on CUDA: only this often
                    rate = tiles / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{totals[0].item() / (step + 1):.3f}", tiles_s=f"{rate:.1f}")
        totals = totals.cpu().numpy()
        seconds = time.perf_counter() - start
        mean = distributed.mean(totals, self.ranks, self.device) / self.steps_per_epoch
        return {
            "loss": float(mean[0]),
            "seg_loss": float(mean[1]),
            "cls_loss": float(mean[2]),
            "tiles_per_s": tiles / seconds,
            "seconds": seconds,
        }

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        while self.epoch < cfg.epochs:
            stats = self.train_epoch()
            if not self.ranks.main:  # the others go on to the next epoch and wait for rank 0 there
                self.epoch += 1
                continue
            val = evaluate_pairs(self.model, self.val_pairs, self.description, self.device)
            val_acc = classification_accuracy(self.model, self.val_tiles, self.description, self.device)
            self.epoch += 1
            row = {**stats, "epoch": self.epoch, "steps": self.epoch * self.steps_per_epoch}
            row.update(val_macro_f1=float(val.macro_f1), val_micro_f1=float(val.micro_f1), val_cls_accuracy=val_acc)
            self.log_rows.append({k: row[k] for k in LOG_FIELDS})
            score = val.macro_f1 if cfg.task == "seg" else (val_acc or 0.0)
            improved = score > self.best_score
            if improved:
                self.best_score = float(score)
                self._save("best.pt")
            self._save("last.pt")
            self._write_log()
            if self.progress:
                tqdm.write(
                    f"epoch {self.epoch}/{cfg.epochs}: loss {stats['loss']:.4f} val macro F1 {val.macro_f1:.4f} "
                    f"micro F1 {val.micro_f1:.4f} cls acc {val_acc or 0:.4f} ({stats['tiles_per_s']:.1f} tiles/s)"
                    f"{' *' if improved else ''}"
                )
        metrics = self.finish() if self.ranks.main else {}
        # Every rank waits for rank 0's scoring, so that all destroy the process group together, as PyTorch's
        # docs ask (a rank 1 that left early was once seen to abort in gloo's teardown).
        distributed.barrier(self.ranks)
        return metrics

    def _save(self, name: str) -> None:
        save_checkpoint(
            self.out_dir / name,
            self.model,
            self.description,
            config=asdict(self.config),
            epoch=self.epoch,
            best_score=self.best_score,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            log=self.log_rows,
        )

    def _write_log(self) -> None:
        with atomic_path(self.out_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.log_rows)
        plot_curves(self.log_rows, self.out_dir / "curves.png")

    def finish(self) -> dict:
        """Score best.pt on the test split (falls back to val when there is no test split)."""
        from segcls.checkpoint import load_model

        model, _, _ = load_model(self.out_dir / "best.pt")
        model.to(self.device)
        split = "test" if self.dataset.split.get("test") else "val"
        scores = evaluate_images(model, self.dataset, self.dataset.split[split], self.description, self.device)
        test_tiles = build_tileset(self.dataset, split, self.config.tile, progress=self.progress)
        metrics = {
            **scores.to_dict(self.description.classes),
            "split": split,
            "cls_accuracy": classification_accuracy(model, test_tiles, self.description, self.device),
            "best_val_score": self.best_score,  # macro F1 (task seg) or cls accuracy (task cls)
            "train_tiles": {"seg": int(self.selection.seg.size), "cls": int(self.selection.cls.size)},
            "tiles_per_s": float(np.mean([r["tiles_per_s"] for r in self.log_rows])) if self.log_rows else None,
            "world_size": self.ranks.world_size,
            "config": asdict(self.config),
        }
        with atomic_path(self.out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
        return metrics


@contextlib.contextmanager
def _cudnn_benchmark() -> Iterator[None]:
    """cuDNN autotuning for the block: training runs one tile size, so each convolution is timed once
    (validation's whole images of many sizes run outside it). Nothing on a CPU."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _majority(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Majority labelled class of each mask (B, H, W) -> (B,)."""
    flat = masks.reshape(masks.shape[0], -1)
    counts = torch.stack([(flat == c).sum(dim=1) for c in range(num_classes)], dim=1)
    return counts.argmax(dim=1)


# What a run's results depend on, besides its length: a checkpoint or a finished run made with other values
# of these is another experiment (resuming it, or counting it as done, would mix two).
RESUME_KEYS = ("dataset", "task", "setting", "seg_fraction", "cls_fraction", "batch_size", "tile", "lr", "seed")
RESUME_KEYS += ("split_seed", "mode", "steps_per_epoch", "cls_batch_size", "cls_weight", "cls_balance", "hed_jitter")
RESUME_KEYS += ("pretrained",)


def changed_settings(saved: dict, config: TrainConfig) -> list[str]:
    """The RESUME_KEYS whose value in `saved` (a checkpoint's or metrics.json's config) differs from `config`;
    a key that `saved` lacks (written before the option existed) counts as the option's default."""
    mine = asdict(config)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return [k for k in RESUME_KEYS if str(saved.get(k, defaults[k])) != str(mine[k])]


def train(config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train one run into `config.out_dir`; returns the test metrics also written to metrics.json ({} on the
    ranks other than 0 under torchrun). `resume` / `overwrite`: as Trainer's."""
    try:
        return Trainer(config, resume=resume, progress=progress, overwrite=overwrite).run()
    finally:
        distributed.close()


__all__ = ["CLS_BALANCES", "MODES", "RUN_FILES", "TrainConfig", "Trainer", "check_run_folder", "class_weights", "train"]
