"""Scoring a network the paper's way: pixel F1 over whole images, and the classification layer's
accuracy on classification tiles."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segcls.core.constants import INPUT_MULTIPLE
from segcls.core.description import ModelDescription
from segcls.core.metrics import ConfusionMatrix, Scores
from segcls.data.augment import normalize
from segcls.data.cache import TileSet
from segcls.data.folder import DatasetFolder, load_pair
from segcls.data.tiles import CLS
from segcls.model import SegClsNet


@torch.inference_mode()
def predict_labels(
    model: SegClsNet, image: np.ndarray, description: ModelDescription, device: torch.device
) -> np.ndarray:
    """Whole-image prediction (H, W) uint8: pad to the encoder's multiple, argmax at stride 8, then
    nearest upsampling (identical to the argmax of the nearest-upsampled logits)."""
    h, w = image.shape[:2]
    ph, pw = -h % INPUT_MULTIPLE, -w % INPUT_MULTIPLE
    x = torch.from_numpy(np.array(image, dtype=np.uint8))[None].to(device)
    x = normalize(x, description.mean, description.std)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    low = model(x, full_res=False).low_res_logits
    labels = low.argmax(dim=1, keepdim=True).to(torch.uint8)
    labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
    return labels[0, 0, :h, :w].cpu().numpy()


def load_pairs(dataset: DatasetFolder, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decoded (image, mask) of the named images, so that a training run that validates every epoch
    decodes its validation images once (they stay in memory: 4 bytes per pixel)."""
    return [load_pair(dataset, name) for name in names]


def evaluate_pairs(
    model: SegClsNet,
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    description: ModelDescription,
    device: torch.device,
) -> Scores:
    """Pixel scores pooled over all labelled pixels of the (image, mask) pairs."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(description.num_classes)
    for image, mask in pairs:
        cm.update(mask, predict_labels(model, image, description, device))
    model.train(was_training)
    return cm.scores()


def evaluate_images(
    model: SegClsNet,
    dataset: DatasetFolder,
    names: list[str],
    description: ModelDescription,
    device: torch.device,
    progress: bool = False,
) -> Scores:
    """Pixel scores pooled over all labelled pixels of the named images, decoded one at a time."""
    from tqdm import tqdm

    names = tqdm(names, desc="images", unit="img", disable=not progress)
    return evaluate_pairs(model, (load_pair(dataset, name) for name in names), description, device)


@torch.inference_mode()
def classification_accuracy(
    model: SegClsNet,
    tiles: TileSet,
    description: ModelDescription,
    device: torch.device,
    batch_size: int = 64,
) -> float | None:
    """Accuracy of the classification layer on the CLS tiles of a tile set (None if it has none)."""
    idx = np.flatnonzero(np.asarray(tiles.kinds) == CLS)
    if idx.size == 0:
        return None
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, idx.size, batch_size):
        chunk = idx[start : start + batch_size]
        x = normalize(torch.from_numpy(np.asarray(tiles.images[chunk])).to(device), description.mean, description.std)
        pred = model(x, full_res=False).class_scores.argmax(dim=1).cpu().numpy()
        correct += int((pred == np.asarray(tiles.labels[chunk])).sum())
    model.train(was_training)
    return correct / idx.size


def evaluate_checkpoint(
    checkpoint: str | Path, dataset: str | Path, split: str = "test", progress: bool = False
) -> dict:
    """Scores of a checkpoint on one split of a dataset folder (what `segcls-eval` prints)."""
    from segcls.checkpoint import load_model
    from segcls.core.errors import DatasetError
    from segcls.data.blocks import spatial_dataset
    from segcls.data.cache import build_tileset
    from segcls.data.folder import open_dataset

    model, description, payload = load_model(checkpoint)
    split_seed = int(payload.get("config", {}).get("split_seed", 0))
    # the spatial split training drew for a dataset without validation images, if it has none
    ds, _ = spatial_dataset(open_dataset(dataset, split_seed=split_seed), tile=description.tile_size, seed=split_seed)
    if tuple(ds.classes) != tuple(description.classes):
        raise DatasetError(
            f"{dataset} has classes {list(ds.classes)} but the checkpoint was trained on {list(description.classes)}"
        )
    names = ds.split.get(split)
    if not names:
        raise DatasetError(f"{dataset} has no images in split '{split}'")
    device = torch.device("cpu")
    scores = evaluate_images(model, ds, names, description, device, progress)
    tiles = build_tileset(ds, split, description.tile_size, progress=progress)
    result = scores.to_dict(description.classes)
    result["cls_accuracy"] = classification_accuracy(model, tiles, description, device)
    result["split"] = split
    result["images"] = len(names)
    return result
